package allinone

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/test/bufconn"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/backup"
	"github.com/clinicchat/clinicchat/gateway"
	artifactv1 "github.com/clinicchat/clinicchat/proto/clinicchat/artifact/v1"
	"github.com/clinicchat/clinicchat/services/attachment"
	"github.com/clinicchat/clinicchat/services/audit"
	"github.com/clinicchat/clinicchat/services/conversation"
	"github.com/clinicchat/clinicchat/services/delivery"
	"github.com/clinicchat/clinicchat/services/demoprovider"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/debugserver"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/ratelimit"
	"github.com/clinicchat/clinicchat/services/preferences"
)

// internalPipeBytes is the buffer of each direction of the demo practice
// system's in-process gRPC connection (bufconn).
const internalPipeBytes = 256 << 10

// duplicateWindow is the streams' duplicate window here. It must outlast
// every republishing of an event id by a relay, all on SQLite here: a row
// stored but not acknowledged within its round goes out again after the
// round's 3 s wait for acknowledgements and at most 1 s of backoff, so two
// such failed rounds in a row end ~6.5 s after the first publish
// (TestDuplicateWindowOutlastsTheRelaysRepublishing), and a row published
// before a crash (rows are deleted up to a second after their
// acknowledgement) goes out again at the next start, which the window
// covers for a restart within it (the embedded server rebuilds the ids
// from the stored events: TestEventIDsOutlastARestartOfTheEmbeddedServer).
// Beyond it, consumers are idempotent by event id. The window costs memory,
// not CPU: the server holds each id for the window (~0.72 MiB of heap per
// second of window at 1,000 sends/s, BENCHMARKS.md mem14) and purges each
// once whatever its length (~1 µs; BenchmarkDuplicateWindow in natsx). It
// was 30 s, ~22 MiB of live heap at 1,000 sends/s (and as much again of
// the collector's headroom); 10 s is ~7 MiB (BENCHMARKS.md, mem15).
const duplicateWindow = 10 * time.Second

// streamsConfig declares the embedded server's streams. SmallBlocks: a
// stream the server creates, and (with natsx.PrepareStreamsForRestart at
// every clean stop) one it opens at start, has 4 MiB blocks instead of 8.
// The file store keeps each finished block's cache ~10 s after its last
// write and the write block's as it fills, so at a steady rate most of the
// server's heap is whole blocks: with 4 MiB blocks the live heap was 2–5
// MiB lower at like rates and peak RSS at 466–649 sends/s 13–17 MiB lower
// than base's at 543–600, for ~10% more collections per message
// (BENCHMARKS.md, mem16 and mem17).
var streamsConfig = natsx.StreamsConfig{DuplicateWindow: duplicateWindow, SmallBlocks: true}

// service is what every service package offers the composition root.
type service interface {
	Register(grpc.ServiceRegistrar)
	Run(context.Context) error
	Close() error
}

// Instance is a running all-in-one.
type Instance struct {
	cfg     Config
	log     *zap.Logger
	ns      *server.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	admin   *backup.Admin
	grpcSrv *grpcx.Server
	httpSrv *http.Server
	debug   *debugserver.Server
	// metricsSrv serves /metrics on --metrics-addr (nil when off).
	metricsSrv *debugserver.Server
	gw         *gateway.Server
	// internal reaches the services of grpcSrv in process (grpcx.InProcess).
	internal grpc.ClientConnInterface
	// providerSrv is the demo practice system; artifacts is delivery's
	// connection to it.
	providerSrv *grpcx.Server
	audit       *audit.Service
	artifacts   *grpc.ClientConn
	services    []service
	cancel      context.CancelFunc
	runCtx      context.Context
	// endStreams ends long-lived HTTP responses (SSE) at shutdown.
	endStreams context.CancelFunc
	group      *errgroup.Group
	// streamsEnsured: Start declared the streams (Stop may prepare them
	// for the next start).
	streamsEnsured bool
	stopOnce       sync.Once
	stopErr        error
	// dirLock holds the data dir's lock file (lockDataDir) until Stop.
	dirLock *os.File

	// HTTPAddr and GRPCAddr are the bound addresses (useful with port 0).
	HTTPAddr string
	GRPCAddr string
	// MetricsAddr is the bound --metrics-addr ("" when off).
	MetricsAddr string
	// DevIssuer signs tokens in dev mode (nil otherwise).
	DevIssuer *auth.DevIssuer
}

// Start brings everything up and returns once the API is being served.
func Start(ctx context.Context, cfg Config, log *zap.Logger) (inst *Instance, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("configuration:\n%w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	in := &Instance{cfg: cfg, log: log}
	if in.dirLock, err = lockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	if n, changed := applyGoMaxProcs(cfg.GoMaxProcs); changed {
		log.Info("go scheduler processors", zap.Int("gomaxprocs", n))
	}
	if pace, set := applyGCPercent(cfg.GCPercent, cfg.MemoryLimit > 0 || os.Getenv("GOMEMLIMIT") != ""); set {
		log.Info("go collector pace", zap.Int("gogc", pace))
	}
	var governor *memoryGovernor
	if cfg.MemoryLimit > 0 {
		governor = newMemoryGovernor(cfg.MemoryLimit)
		log.Info("go memory limit", zap.Int64("bytes", cfg.MemoryLimit), zap.Int64("now", governor.update()))
	}
	defer func() {
		if err != nil {
			_ = in.Stop()
		}
	}()

	verifier, err := in.verifier()
	if err != nil {
		return nil, err
	}
	in.ns, in.nc, err = natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: cfg.path("nats"), Listen: cfg.NATSListen}, log)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(in.nc)
	if err != nil {
		return nil, err
	}
	in.js = js
	if err := natsx.EnsureStreams(ctx, js, streamsConfig); err != nil {
		return nil, err
	}
	in.streamsEnsured = true
	// The embedded server's durables have one consumer each, in this
	// process: their batches are acked with one message each (AckAll).
	js = natsx.SoleConsumer(js)

	// One gRPC server hosts every service; internal calls reach it in
	// process (through its interceptors, without the HTTP/2 transport),
	// practice systems through --grpc-addr.
	if cfg.Dev && cfg.DevAllowNonLoopback {
		log.Warn("DEV MODE ON A NON-LOOPBACK ADDRESS: anyone who can reach " + cfg.HTTPAddr +
			" can mint a token for any practice and role (--dev-allow-non-loopback). Never do this with real patients.")
	}
	limitMetrics := ratelimit.NewMetrics()
	limits := ratelimit.NewInterceptors(cfg.Limits, limitMetrics)
	in.grpcSrv = grpcx.NewServer(log, verifier, grpcx.Intercept(limits.Unary, limits.Stream))
	in.internal = in.grpcSrv.InProcess()
	conn := in.internal

	prefs, err := preferences.New(ctx, preferences.Config{DatabaseDSN: cfg.path("preferences.db")}, preferences.Deps{Log: log.Named("preferences"), JS: js})
	if err != nil {
		return nil, fmt.Errorf("preferences: %w", err)
	}
	in.services = append(in.services, prefs)
	conv, err := conversation.New(ctx, conversation.Config{DatabaseDSN: cfg.path("conversation.db"), ArchiveAfter: cfg.ArchiveAfter,
		ArchiveSweepInterval: cfg.ArchiveSweepInterval,
		// Without --nats-listen no notifier can connect to the embedded NATS.
		NoNotificationRequests: cfg.NATSListen == ""}, conversation.Deps{Log: log.Named("conversation"), JS: js, Preferences: conn})
	if err != nil {
		return nil, fmt.Errorf("conversation: %w", err)
	}
	in.services = append(in.services, conv)
	// Each bufconn connection is two ring buffers of internalPipeBytes, and
	// the ring is cycled through whole: 4 MiB ones kept 8 MiB resident and
	// walked the cache; 256 KiB still holds several 64 KiB upload frames.
	// Appointments, invoices and prescriptions: in dev mode the demo
	// practice system, on its own in-process server that accepts only the
	// delivery service's own credential, as a real one would (the user's
	// token never reaches it). Without dev mode there is none: the demo
	// provider invents records for any patient.
	var artifacts grpc.ClientConnInterface
	providerLis := bufconn.Listen(internalPipeBytes)
	if cfg.Dev {
		providerToken := rand.Text()
		in.providerSrv = grpcx.NewServer(log.Named("demoprovider"), demoprovider.ServiceVerifier{Token: providerToken})
		artifactv1.RegisterArtifactProviderServiceServer(in.providerSrv.Server, &demoprovider.Provider{})
		in.artifacts, err = delivery.DialArtifactProvider(ctx, delivery.ArtifactProviderConfig{InProcess: providerLis.DialContext,
			Token: providerToken})
		if err != nil {
			return nil, fmt.Errorf("demo provider: %w", err)
		}
		artifacts = in.artifacts
	}
	del, err := delivery.New(ctx, delivery.Config{DatabaseDSN: cfg.path("delivery.db"), StepUpWindow: cfg.StepUpWindow},
		delivery.Deps{Log: log.Named("delivery"), JS: js, Conversations: conn, Preferences: conn, Attachments: conn, Artifacts: artifacts})
	if err != nil {
		return nil, fmt.Errorf("delivery: %w", err)
	}
	in.services = append(in.services, del)
	if err := in.devKeys(); err != nil {
		return nil, err
	}
	att, err := attachment.New(ctx, attachment.Config{DatabaseDSN: cfg.path("attachment.db"), BlobDir: cfg.path("blobs"), StepUpWindow: cfg.StepUpWindow,
		Encryption: attachment.Encryption{KEKFile: cfg.kekFile()}, PendingUploadQuota: cfg.PendingUploadQuota, LimitMetrics: limitMetrics},
		attachment.Deps{Log: log.Named("attachment"), JS: js, Conversations: conn})
	if err != nil {
		return nil, fmt.Errorf("attachment: %w", err)
	}
	in.services = append(in.services, att)
	aud, err := audit.New(ctx, audit.Config{DatabaseDSN: cfg.path("audit.db"), SignerKeyFile: cfg.auditKeyFile(), CheckpointInterval: time.Minute,
		WitnessFile: cfg.witnessFile()},
		audit.Deps{Log: log.Named("audit"), JS: js, Health: in.grpcSrv.Health})
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	in.services = append(in.services, aud)
	in.audit = aud
	for _, s := range in.services {
		s.Register(in.grpcSrv)
	}
	in.grpcSrv.InitMetrics()
	// One /metrics for the process: the gateway's, the gRPC server's, every
	// outbox's backlog, every durable consumer's lag, the audit log's.
	metrics := []prometheus.Collector{in.grpcSrv.Metrics, limitMetrics, natsx.LagCollector(js, ""), natsx.ConnCollector(in.nc)}
	for _, s := range in.services {
		if c, ok := s.(interface{ Collectors() []prometheus.Collector }); ok {
			metrics = append(metrics, c.Collectors()...)
		}
	}

	in.gw, err = gateway.New(gateway.Config{DevMode: cfg.Dev, StepUpWindow: cfg.StepUpWindow, ArchiveAfter: cfg.ArchiveAfter,
		MaxStreamsPerIdentity: cfg.MaxStreamsPerIdentity, MaxStreams: cfg.MaxStreams}, gateway.Deps{
		Log: log.Named("gateway"), Verifier: verifier, DevIssuer: in.DevIssuer, JS: js,
		Conversation: conn, Delivery: conn, Preferences: conn, Attachment: conn, Audit: conn,
		Ready: in.ready, Metrics: metrics,
	})
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}

	grpcLis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("--grpc-addr: %w", err)
	}
	grpcLis = grpcx.LimitListener(grpcLis)
	httpLis, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		_ = grpcLis.Close()
		return nil, fmt.Errorf("--http-addr: %w", err)
	}
	in.GRPCAddr, in.HTTPAddr = grpcLis.Addr().String(), httpLis.Addr().String()

	runCtx, cancel := context.WithCancel(context.Background())
	in.cancel = cancel
	g, gctx := errgroup.WithContext(runCtx)
	in.group, in.runCtx = g, gctx
	streamCtx, endStreams := context.WithCancel(context.Background())
	in.endStreams = endStreams
	if in.providerSrv != nil {
		g.Go(func() error { return in.providerSrv.Serve(providerLis) })
	}
	g.Go(func() error { return in.grpcSrv.Serve(grpcLis) })
	if governor != nil {
		g.Go(func() error { return governor.run(gctx) })
	}
	for _, s := range in.services {
		g.Go(func() error { return s.Run(gctx) })
	}
	in.httpSrv = &http.Server{
		Handler:           in.gw.Handler(),
		ReadHeaderTimeout: gateway.ReadHeaderTimeout,
		IdleTimeout:       gateway.IdleTimeout,
		MaxHeaderBytes:    gateway.MaxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return streamCtx },
	}
	g.Go(func() error {
		if err := in.httpSrv.Serve(httpLis); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	if in.debug, err = debugserver.Start(cfg.DebugAddr, log); err != nil {
		return nil, err
	}
	if sock := cfg.adminSocket(); len(sock) > maxSocketPath {
		// A Unix socket path is limited (108 bytes on Linux, 104 on macOS).
		log.Warn("admin socket path too long: clinicchat backup is off; set --admin-socket to a shorter path", zap.String("admin_socket", sock))
	} else if in.admin, err = backup.ListenAdmin(sock, in.backupSource, log.Named("admin")); err != nil {
		return nil, err
	}
	if in.metricsSrv, err = debugserver.StartMetrics(cfg.MetricsAddr, in.gw.Gatherer(), log); err != nil {
		return nil, err
	}
	if in.metricsSrv != nil {
		in.MetricsAddr = in.metricsSrv.Addr
	}
	in.grpcSrv.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)

	if cfg.Dev {
		if err := in.seed(ctx); err != nil {
			return nil, fmt.Errorf("seed demo practice: %w", err)
		}
	}
	log.Info("clinicchat all-in-one ready", zap.String("http_addr", in.HTTPAddr), zap.String("grpc_addr", in.GRPCAddr), zap.Bool("dev", cfg.Dev))
	return in, nil
}

// maxSocketPath is the longest Unix socket path every platform accepts.
const maxSocketPath = 100

// databases are the all-in-one's SQLite files in the data dir.
var databases = []string{"preferences.db", "conversation.db", "delivery.db", "attachment.db", "audit.db"}

// backupSource is what `clinicchat backup` snapshots (the admin socket).
func (in *Instance) backupSource() backup.Source {
	cfg := in.cfg
	return backup.Source{
		DataDir: cfg.DataDir, Databases: databases, Files: []string{"dev-signing.key"},
		BlobDir: cfg.path("blobs"), AttachmentDB: "attachment.db", JS: in.js, WitnessFile: cfg.witnessFile(),
		Keys: map[string]string{"audit-signing.key": cfg.auditKeyFile(), "audit-signing.key.pub": cfg.auditKeyFile() + ".pub",
			"attachment.kek": cfg.kekFile()},
	}
}

// AdminSocket is the path of the admin socket (`clinicchat backup` asks it).
func (in *Instance) AdminSocket() string { return in.cfg.adminSocket() }

func (in *Instance) verifier() (auth.Verifier, error) {
	if !in.cfg.Dev {
		return auth.NewJWKSVerifier(auth.JWKSConfig{URL: in.cfg.JWKSURL, Issuer: in.cfg.JWTIssuer, Audience: in.cfg.JWTAudience})
	}
	key, err := loadOrCreateKey(in.cfg.path("dev-signing.key"))
	if err != nil {
		return nil, err
	}
	in.DevIssuer = &auth.DevIssuer{Key: key, Issuer: auth.DevIssuerName, TTL: 12 * time.Hour}
	return auth.HMACVerifier{Key: key, Issuer: auth.DevIssuerName}, nil
}

// devKeys makes the keys that must not sit with the data: in dev mode the
// keys dir gets an audit signing key and an attachment KEK when missing (a
// signing key left in the data dir by an earlier version is moved there, so
// its checkpoints still verify); without --dev they must exist.
func (in *Instance) devKeys() error {
	cfg := in.cfg
	if !cfg.Dev {
		for _, f := range []string{cfg.auditKeyFile(), cfg.kekFile()} {
			if _, err := os.Stat(f); err != nil {
				return fmt.Errorf("without --dev the operator provides the keys: %w", err)
			}
		}
		return nil
	}
	if err := os.MkdirAll(cfg.keysDir(), 0o700); err != nil {
		return fmt.Errorf("keys dir: %w", err)
	}
	legacy := cfg.path("audit-checkpoint.key")
	if _, err := os.Stat(cfg.auditKeyFile()); errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(legacy); err == nil {
			if err := os.Rename(legacy, cfg.auditKeyFile()); err != nil {
				return fmt.Errorf("moving the audit key out of the data dir: %w", err)
			}
			_ = os.Rename(legacy+".pub", cfg.auditKeyFile()+".pub")
			in.log.Warn("moved the audit signing key out of the data dir", zap.String("to", cfg.auditKeyFile()))
		}
	}
	if err := audit.EnsureDevSignerKey(cfg.auditKeyFile(), audit.DefaultSignerName); err != nil {
		return fmt.Errorf("audit key: %w", err)
	}
	made, err := attachment.EnsureDevKEK(cfg.kekFile())
	if err != nil {
		return fmt.Errorf("attachment key: %w", err)
	}
	in.log.Info("dev keys (kept apart from the data dir)", zap.String("keys_dir", cfg.keysDir()),
		zap.String("audit_signing_key", cfg.auditKeyFile()), zap.String("attachment_kek", cfg.kekFile()), zap.Bool("kek_generated", made),
		zap.String("audit_witness_file", cfg.witnessFile()))
	return nil
}

// loadOrCreateKey keeps one random HMAC key per data dir, so dev tokens
// survive a restart.
func loadOrCreateKey(path string) ([]byte, error) {
	key, err := os.ReadFile(path)
	if err == nil && len(key) >= 32 {
		return key, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("dev signing key: %w", err)
	}
	key = make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, key, 0o600); err != nil {
		return nil, fmt.Errorf("dev signing key: %w", err)
	}
	return key, nil
}

// ready reports whether the services answer health checks.
func (in *Instance) ready(ctx context.Context) error {
	if in.nc == nil || !in.nc.IsConnected() {
		return errors.New("nats not connected")
	}
	resp, err := healthpb.NewHealthClient(in.internal).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return errors.New("services not serving")
	}
	// Not ready while an audit log does not verify (its detail is logged).
	if in.audit != nil {
		if err := in.audit.Verification(); err != nil {
			return err
		}
	}
	return nil
}

// Done is closed when a component fails on its own; the caller should Stop.
func (in *Instance) Done() <-chan struct{} { return in.runCtx.Done() }

// Stop drains and stops everything: health NOT_SERVING, live streams ended,
// HTTP and gRPC drained within the drain timeout, then background work,
// databases and NATS.
func (in *Instance) Stop() error {
	in.stopOnce.Do(func() {
		drain := in.cfg.DrainTimeout
		if drain <= 0 {
			drain = 20 * time.Second
		}
		var errs []error
		if in.grpcSrv != nil {
			in.grpcSrv.Health.Shutdown()
		}
		_ = in.debug.Stop()
		_ = in.admin.Close()
		_ = in.metricsSrv.Stop()
		if in.endStreams != nil {
			in.endStreams()
		}
		if in.httpSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), drain)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); _ = in.gw.Shutdown(ctx) }() // ends event streams
			if err := in.httpSrv.Shutdown(ctx); err != nil {
				_ = in.httpSrv.Close()
			}
			wg.Wait()
			cancel()
		}
		if in.grpcSrv != nil {
			in.grpcSrv.Shutdown(drain)
		}
		if in.providerSrv != nil {
			in.providerSrv.Shutdown(drain)
		}
		if in.cancel != nil {
			in.cancel()
		}
		if in.group != nil {
			if err := in.group.Wait(); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, grpc.ErrServerStopped) {
				errs = append(errs, err)
			}
		}
		// Every in-process caller (HTTP handlers, gRPC handlers, the
		// services' background work) has stopped: the databases may close.
		if in.grpcSrv != nil && !in.grpcSrv.StopInProcess(drain) {
			in.log.Warn("in-process calls still running after the drain timeout")
		}
		if in.artifacts != nil {
			_ = in.artifacts.Close()
		}
		for _, s := range in.services {
			if err := s.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		// Nothing publishes any more: store the streams so that the next
		// start opens them with small blocks (streamsConfig).
		if in.streamsEnsured {
			ctx, cancel := context.WithTimeout(context.Background(), drain)
			if err := natsx.PrepareStreamsForRestart(ctx, in.js, streamsConfig); err != nil {
				in.log.Warn("streams not prepared for the next start (they will open with 8 MiB blocks)", zap.Error(err))
			}
			cancel()
		}
		if in.nc != nil {
			_ = in.nc.Drain()
			in.nc.Close()
		}
		if in.ns != nil {
			in.ns.Shutdown()
			in.ns.WaitForShutdown()
		}
		if in.dirLock != nil {
			_ = in.dirLock.Close() // releases the data dir
		}
		in.stopErr = errors.Join(errs...)
	})
	return in.stopErr
}
