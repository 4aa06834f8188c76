// Package svcmain is the shared composition root of a standalone service
// binary (services/<name>/cmd/<name>): typed config from flags and
// CLINICCHAT_* environment variables, a Validate that reports every problem at
// once, the logger, token verification, NATS and streams, the gRPC server with
// health and reflection, and orderly shutdown.
package svcmain

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/debugserver"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/ratelimit"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// Common is the configuration every standalone service shares.
type Common struct {
	GRPCAddr     string
	DatabaseDSN  string
	NATS         natsx.Config
	NATSReplicas int
	// NATSStreamMaxBytes bounds each stream (JetStream reserves it on every
	// server holding a replica).
	NATSStreamMaxBytes int64
	NATSPrefix         string
	JWKSURL            string
	JWTIssuer          string
	JWTAudience        string
	DevSigningKey      string // dev only: HS256 key file instead of JWKS
	DrainTimeout       time.Duration
	LogLevel           string
	DebugAddr          string
	// MetricsAddr serves Prometheus /metrics (off when empty).
	MetricsAddr   string
	NeedsDatabase bool
	// MigrateOnStart applies the schema migrations when the service starts
	// (default). Off, the service only checks that the database is at the
	// version it needs, and a separate `<service> migrate` (a Kubernetes Job)
	// applies them.
	MigrateOnStart bool
	// Limits are the per-identity limits of the gRPC server.
	Limits ratelimit.Config
	// TLS is service-to-service TLS: the gRPC listener serves it and every
	// peer connection (Runtime.Dial) uses it.
	TLS grpcx.TLSConfig
	// HealthAddr is an optional plaintext listener serving only gRPC health,
	// for probes that cannot speak TLS (the kubelet's gRPC probe).
	HealthAddr string
}

// Flags registers the common flags on fs; every flag also reads the
// environment variable CLINICCHAT_<NAME> (dashes as underscores).
func (c *Common) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.GRPCAddr, "grpc-addr", ":9090", "gRPC listen address")
	fs.StringVar(&c.DatabaseDSN, "database-dsn", "", "postgres://… or a SQLite file path")
	natsx.ConnFlags(fs, &c.NATS)
	fs.IntVar(&c.NATSReplicas, "nats-replicas", 1, "JetStream stream replicas (3 in a cluster)")
	fs.Int64Var(&c.NATSStreamMaxBytes, "nats-stream-max-bytes", natsx.DefaultStreamMaxBytes,
		"bytes each JetStream stream may hold (oldest events go first); the servers reserve it per replica, so all the streams must fit their max_file_store")
	natsx.PrefixFlag(fs, &c.NATSPrefix)
	fs.StringVar(&c.JWKSURL, "jwks-url", "", "issuer JWKS URL for verifying bearer tokens")
	fs.StringVar(&c.JWTIssuer, "jwt-issuer", "", "required iss claim")
	fs.StringVar(&c.JWTAudience, "jwt-audience", "", "required aud claim")
	fs.StringVar(&c.DevSigningKey, "dev-signing-key-file", "", "dev only: HS256 key file (instead of --jwks-url)")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 20*time.Second, "how long in-flight calls may finish on SIGTERM")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.DebugAddr, "debug-addr", "", "operator-only listener for pprof and runtime metrics (off when empty)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "operator listener serving Prometheus /metrics, e.g. :9464 (off when empty)")
	fs.BoolVar(&c.MigrateOnStart, "migrate-on-start", true, "apply schema migrations at start (false: only check the schema version; run `migrate` first)")
	c.Limits.Flags(fs)
	c.TLS.Flags(fs)
	fs.StringVar(&c.HealthAddr, "grpc-health-addr", "", "plaintext listener serving only gRPC health, for probes that cannot speak TLS (empty: off)")
}

// Validate reports every problem at once.
func (c *Common) Validate() error {
	var errs []error
	if c.GRPCAddr == "" {
		errs = append(errs, errors.New("--grpc-addr is required"))
	}
	if c.NeedsDatabase && c.DatabaseDSN == "" {
		errs = append(errs, errors.New("--database-dsn is required"))
	}
	if err := c.NATS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.JWKSURL == "" && c.DevSigningKey == "" {
		errs = append(errs, errors.New("one of --jwks-url or --dev-signing-key-file is required"))
	}
	if c.JWKSURL != "" && c.JWTIssuer == "" {
		errs = append(errs, errors.New("--jwt-issuer is required with --jwks-url"))
	}
	if c.JWKSURL != "" && c.JWTAudience == "" {
		errs = append(errs, errors.New("--jwt-audience is required with --jwks-url"))
	}
	if c.NATSReplicas < 1 || c.NATSReplicas > 5 {
		errs = append(errs, errors.New("--nats-replicas must be 1 to 5"))
	}
	if c.NATSStreamMaxBytes != 0 && c.NATSStreamMaxBytes < 1<<20 {
		errs = append(errs, errors.New("--nats-stream-max-bytes must be at least 1 MiB"))
	}
	if err := c.Limits.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.TLS.ValidateServer(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Parse parses flags after applying CLINICCHAT_* environment defaults.
func Parse(fs *flag.FlagSet, args []string) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		env := "CLINICCHAT_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", env, err))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return fs.Parse(args)
}

// NewLogger returns a production JSON logger at level.
func NewLogger(level, service string) (*zap.Logger, error) {
	cfg := zap.NewProductionConfig()
	if err := cfg.Level.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	l, err := cfg.Build()
	if err != nil {
		return nil, err
	}
	return l.With(zap.String(logkeys.Service, service)), nil
}

// Verifier builds the token verifier the config names.
func (c *Common) Verifier() (auth.Verifier, error) {
	if c.JWKSURL != "" {
		return auth.NewJWKSVerifier(auth.JWKSConfig{URL: c.JWKSURL, Issuer: c.JWTIssuer, Audience: c.JWTAudience})
	}
	key, err := os.ReadFile(c.DevSigningKey)
	if err != nil {
		return nil, fmt.Errorf("dev signing key: %w", err)
	}
	return auth.HMACVerifier{Key: key, Issuer: auth.DevIssuerName}, nil
}

// Runtime is what a service gets from Start.
type Runtime struct {
	Log    *zap.Logger
	NC     *nats.Conn
	JS     jetstream.JetStream
	Server *grpcx.Server
	Common *Common
	// dialOpts are the peer connections' options (TLS when configured).
	dialOpts []grpc.DialOption
}

// Dial opens a connection to a peer service (grpcx.Dial) over the
// configured service-to-service TLS.
func (rt *Runtime) Dial(target string) (*grpc.ClientConn, error) {
	return grpcx.Dial(target, rt.dialOpts...)
}

// Service is what a standalone binary runs.
type Service interface {
	// Run runs background work (outbox relay, consumers) until ctx ends.
	Run(ctx context.Context) error
	// Close releases the database.
	Close() error
}

// Main runs one service binary: build is called with the runtime and returns
// the service after registering it on rt.Server.
func Main(name string, c *Common, build func(ctx context.Context, rt *Runtime) (Service, error)) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	log, err := NewLogger(c.LogLevel, name)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	log.Info("starting", zap.String("grpc_addr", c.GRPCAddr), zap.String("nats_url", RedactURLs(c.NATS.URL)),
		zap.Bool("database", c.DatabaseDSN != ""), zap.Bool("jwks", c.JWKSURL != ""), zap.Int("nats_replicas", c.NATSReplicas))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// Tracing first: the gRPC server and client connections built below
	// are traced only when it is on (OTEL_* variables).
	shutdownTracing, err := telemetry.Setup(ctx, name)
	if err != nil {
		return err
	}
	defer FlushTraces(log, shutdownTracing)

	verifier, err := c.Verifier()
	if err != nil {
		return err
	}
	// The certificate files load before anything connects: a bad one fails at once.
	tlsOpts, err := c.TLS.ServerOptions()
	if err != nil {
		return err
	}
	dialOpts, err := c.TLS.DialOptions()
	if err != nil {
		return err
	}
	if err := natsx.SetPrefix(c.NATSPrefix); err != nil {
		return err
	}
	c.NATS.Name = name
	nc, err := natsx.Connect(c.NATS)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if err := natsx.CheckServer(ctx, nc, js); err != nil {
		return err
	}
	if err := natsx.EnsureStreams(ctx, js, natsx.StreamsConfig{Replicas: c.NATSReplicas, MaxBytes: c.NATSStreamMaxBytes}); err != nil {
		return err
	}
	srv := grpcx.NewServer(log, verifier, append(ratelimit.NewInterceptors(c.Limits, nil).ServerOptions(), tlsOpts...)...)
	rt := &Runtime{Log: log, NC: nc, JS: js, Server: srv, Common: c, dialOpts: dialOpts}
	bctx := ctx
	if !c.MigrateOnStart {
		bctx = sqldb.CheckOnly(ctx) // New checks the schema version instead of migrating
	}
	svc, err := build(bctx, rt)
	if err != nil {
		return err
	}
	defer func() { _ = svc.Close() }()
	srv.InitMetrics()
	reg, err := Registry(name, srv, js, svc)
	if err != nil {
		return err
	}
	metricsSrv, err := debugserver.StartMetrics(c.MetricsAddr, reg, log)
	if err != nil {
		return err
	}
	defer func() { _ = metricsSrv.Stop() }()
	lis, err := net.Listen("tcp", c.GRPCAddr)
	if err != nil {
		return err
	}
	lis = grpcx.LimitListener(lis)
	var healthSrv *grpc.Server
	var healthLis net.Listener
	if c.HealthAddr != "" {
		if healthLis, err = net.Listen("tcp", c.HealthAddr); err != nil {
			_ = lis.Close()
			return fmt.Errorf("--grpc-health-addr: %w", err)
		}
		healthSrv = grpcx.NewHealthServer(srv.Health)
	}
	srv.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	log.Info("serving", zap.String("grpc_addr", lis.Addr().String()), zap.Bool("tls", c.TLS.Enabled()),
		zap.Bool("mutual_tls", c.TLS.CAFile != ""))

	debug, err := debugserver.Start(c.DebugAddr, log)
	if err != nil {
		return err
	}
	defer func() { _ = debug.Stop() }()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Serve(lis) })
	if healthSrv != nil {
		g.Go(func() error { return healthSrv.Serve(healthLis) })
	}
	g.Go(func() error { return svc.Run(gctx) })
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down", zap.Duration("drain_timeout", c.DrainTimeout))
		srv.Shutdown(c.DrainTimeout)
		if healthSrv != nil {
			healthSrv.Stop()
		}
		return nil
	})
	err = g.Wait()
	_ = nc.Drain()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// Collectors is what a service with metrics of its own implements (the
// outbox backlog, the audit log's verification and checkpoint age).
type Collectors interface {
	Collectors() []prometheus.Collector
}

// Registry is a service's /metrics: the Go runtime and process, the gRPC
// server's metrics, the lag of the service's durable consumers (those named
// "<name>-…"), the traffic of its NATS connection and svc's own collectors
// when it has any.
func Registry(name string, srv *grpcx.Server, js jetstream.JetStream, svc any) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	cs := []prometheus.Collector{debugserver.GoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		srv.Metrics, natsx.LagCollector(js, name+"-"), natsx.ConnCollector(js.Conn())}
	if own, ok := svc.(Collectors); ok {
		cs = append(cs, own.Collectors()...)
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return reg, nil
}

// FlushTraces exports the spans still buffered (telemetry.Setup's shutdown),
// for at most 5 seconds.
func FlushTraces(log *zap.Logger, shutdown func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		log.Warn("flushing traces", zap.Error(err))
	}
}

// MigrateCommand reports whether args start with the "migrate" subcommand
// ("<service> migrate --database-dsn=…": apply the schema and exit) and returns
// the flags after it.
func MigrateCommand(args []string) (bool, []string) {
	if len(args) > 0 && args[0] == "migrate" {
		return true, args[1:]
	}
	return false, args
}

// RunMigrate is the "migrate" subcommand: it opens dsn, applies the
// service's migrations, writes which versions it applied to out and closes
// the database. It never starts the service.
func RunMigrate(name, dsn string, out io.Writer, migrate func(context.Context, *sqldb.DB) error) error {
	if dsn == "" {
		return errors.New("migrate: --database-dsn (or CLINICCHAT_DATABASE_DSN) is required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	db, err := sqldb.Open(ctx, dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	before, err := sqldb.AppliedVersions(ctx, db)
	if err != nil {
		return err
	}
	if err := migrate(ctx, db); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	after, err := sqldb.AppliedVersions(ctx, db)
	if err != nil {
		return err
	}
	var applied []string
	for _, v := range after {
		if !slices.Contains(before, v) {
			applied = append(applied, strconv.FormatInt(v, 10))
		}
	}
	version := int64(0)
	if len(after) > 0 {
		version = after[len(after)-1]
	}
	if len(applied) == 0 {
		_, err = fmt.Fprintf(out, "%s: %s schema already at version %d; nothing to apply\n", name, db.Dialect(), version)
	} else {
		_, err = fmt.Fprintf(out, "%s: applied %s migration(s) %s; schema at version %d\n", name, db.Dialect(), strings.Join(applied, ", "), version)
	}
	return err
}

// RedactURLs hides passwords in a comma-separated list of URLs, for logs.
func RedactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}
