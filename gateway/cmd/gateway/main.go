// Command gateway runs clinicchat's HTTP edge on its own (one Deployment in
// production): the JSON API, token verification, attachment streaming and
// /v1/events, in front of the five gRPC services. Every flag can also be set
// as CLINICCHAT_<FLAG> (dashes as underscores).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/clinicchat/clinicchat/gateway"
	"github.com/clinicchat/clinicchat/services/demoprovider"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/debugserver"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/svcmain"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var cfg gateway.BinaryConfig
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	cfg.Flags(fs)
	if err := svcmain.Parse(fs, args); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	log, err := svcmain.NewLogger(cfg.LogLevel, "gateway")
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	cfg.Gateway.DevMode = cfg.Dev
	log.Info("starting", zap.String(logkeys.Addr, cfg.HTTPAddr), zap.String("grpc_addr", cfg.GRPCAddr), zap.Strings("upstreams", cfg.Upstreams[:]),
		zap.String("nats_url", svcmain.RedactURLs(cfg.NATS.URL)), zap.Bool("jwks", cfg.JWKSURL != ""), zap.Bool("dev", cfg.Dev),
		zap.Duration("step_up_window", cfg.Gateway.StepUpWindow), zap.Duration("sse_keepalive", cfg.Gateway.KeepAlive))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// Tracing first (OTEL_* variables): the upstream connections and the
	// HTTP handler built below are traced only when it is on.
	shutdownTracing, err := telemetry.Setup(ctx, "gateway")
	if err != nil {
		return err
	}
	defer svcmain.FlushTraces(log, shutdownTracing)

	common := svcmain.Common{JWKSURL: cfg.JWKSURL, JWTIssuer: cfg.JWTIssuer, JWTAudience: cfg.JWTAudience,
		DevSigningKey: cfg.DevSigningKey}
	verifier, err := common.Verifier()
	if err != nil {
		return err
	}
	var devIssuer *auth.DevIssuer
	if cfg.Dev {
		key, err := os.ReadFile(cfg.DevSigningKey)
		if err != nil {
			return fmt.Errorf("dev signing key: %w", err)
		}
		devIssuer = &auth.DevIssuer{Key: key, Issuer: auth.DevIssuerName}
	}

	if err := natsx.SetPrefix(cfg.NATSPrefix); err != nil {
		return err
	}
	cfg.NATS.Name = "gateway"
	nc, err := natsx.Connect(cfg.NATS)
	if err != nil {
		return err
	}
	natsClosed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(natsClosed) })
	defer nc.Close()
	// The gateway only reads the streams; the services declare them.
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if err := natsx.CheckServer(ctx, nc, js); err != nil {
		return err
	}

	// TLS to the services (the public gRPC edge forwards over these too).
	dialOpts, err := cfg.UpstreamTLS.DialOptions()
	if err != nil {
		return fmt.Errorf("upstream TLS: %w", err)
	}
	var conns [5]*grpc.ClientConn
	upstreams := map[string]grpc.ClientConnInterface{}
	for i, addr := range cfg.Upstreams {
		dial := grpcx.Dial
		if gateway.UpstreamNames[i] == "delivery" {
			// A thread's sends to one delivery replica (the gateway sets
			// grpcx.AffinityHeader to the thread): it batches them and knows
			// the thread's counter (one round trip a batch).
			dial = grpcx.DialAffine
		}
		cc, err := dial(addr, dialOpts...)
		if err != nil {
			return fmt.Errorf("--%s-addr: %w", gateway.UpstreamNames[i], err)
		}
		defer func() { _ = cc.Close() }()
		conns[i] = cc
		upstreams[gateway.UpstreamNames[i]] = cc
	}

	gw, err := gateway.New(cfg.Gateway, gateway.Deps{
		Log: log, Verifier: verifier, DevIssuer: devIssuer, JS: js,
		Conversation: conns[0], Delivery: conns[1], Preferences: conns[2], Attachment: conns[3], Audit: conns[4],
		Ready: func(ctx context.Context) error { return ready(ctx, nc, conns) },
	})
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: gw.Handler(),
		// No ReadTimeout or WriteTimeout: uploads, downloads and event
		// streams are long; the gateway bounds each read and write itself.
		ReadHeaderTimeout: gateway.ReadHeaderTimeout,
		IdleTimeout:       gateway.IdleTimeout,
		MaxHeaderBytes:    gateway.MaxHeaderBytes,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	var edgeOpts []grpc.ServerOption
	if cfg.HTTPTLSCertFile != "" {
		// TLS on both public listeners (a bad file stops the start here).
		if srv.TLSConfig, err = grpcx.ServingTLS(cfg.HTTPTLSCertFile, cfg.HTTPTLSKeyFile, "http-"); err != nil {
			return err
		}
		edgeTLS := srv.TLSConfig.Clone()
		edgeTLS.NextProtos = []string{"h2"}
		edgeOpts = append(edgeOpts, grpc.Creds(credentials.NewTLS(edgeTLS)))
	}
	lis, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return err
	}
	debug, err := debugserver.Start(cfg.DebugAddr, log)
	if err != nil {
		return err
	}
	defer func() { _ = debug.Stop() }()
	metricsSrv, err := debugserver.StartMetrics(cfg.MetricsAddr, gw.Gatherer(), log)
	if err != nil {
		return err
	}
	defer func() { _ = metricsSrv.Stop() }()

	var edge *gateway.GRPCEdge
	var edgeLis net.Listener
	if cfg.GRPCAddr != "" {
		if edge, err = gateway.NewGRPCEdge(upstreams, edgeOpts...); err != nil {
			return err
		}
		if edgeLis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
			_ = lis.Close()
			return fmt.Errorf("--grpc-addr: %w", err)
		}
		edge.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	}

	g, gctx := errgroup.WithContext(ctx)
	if cfg.SeedDemo {
		g.Go(func() error { seedDemo(gctx, log, conns[2], devIssuer); return nil })
	}
	g.Go(func() error {
		serve := func() error { return srv.Serve(lis) }
		if srv.TLSConfig != nil {
			serve = func() error { return srv.ServeTLS(lis, "", "") }
		}
		if err := serve(); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	if edge != nil {
		g.Go(func() error { return edge.Serve(edgeLis) })
	}
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down", zap.Duration("drain_timeout", cfg.DrainTimeout))
		sctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
		defer cancel()
		// Stop accepting and let requests finish while event streams end
		// (their clients reconnect to another replica with Last-Event-ID).
		var sg errgroup.Group
		sg.Go(func() error { return gw.Shutdown(sctx) })
		sg.Go(func() error { return srv.Shutdown(sctx) })
		if edge != nil {
			sg.Go(func() error { edge.Shutdown(cfg.DrainTimeout); return nil })
		}
		if err := sg.Wait(); err != nil {
			log.Warn("shutdown incomplete", zap.Error(err))
			_ = srv.Close()
		}
		return nil
	})
	err = g.Wait()

	// Drain NATS: consumers of closed streams are gone; flush what is left.
	if derr := nc.Drain(); derr == nil {
		select {
		case <-natsClosed:
		case <-time.After(5 * time.Second):
			log.Warn("nats drain timed out")
		}
	}
	log.Info("stopped")
	return err
}

// ready reports whether NATS is connected and every upstream answers its
// gRPC health check with SERVING.
func ready(ctx context.Context, nc *nats.Conn, conns [5]*grpc.ClientConn) error {
	if st := nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("nats: %s", st)
	}
	g, ctx := errgroup.WithContext(ctx)
	for i, cc := range conns {
		g.Go(func() error {
			resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				return fmt.Errorf("%s: %w", gateway.UpstreamNames[i], err)
			}
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				return fmt.Errorf("%s: %s", gateway.UpstreamNames[i], resp.GetStatus())
			}
			return nil
		})
	}
	return g.Wait()
}

// seedDemo fills the demo practice through the preferences service (dev
// mode), retrying until the service answers; a failure is logged, never
// fatal.
func seedDemo(ctx context.Context, log *zap.Logger, prefs grpc.ClientConnInterface, issuer *auth.DevIssuer) {
	for attempt := 1; attempt <= 60; attempt++ {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		seeded, err := demoprovider.Seed(sctx, prefs, issuer)
		cancel()
		if err == nil {
			log.Info("demo practice", zap.Bool("seeded_now", seeded))
			return
		}
		log.Warn("seeding the demo practice", zap.Int("attempt", attempt), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}
