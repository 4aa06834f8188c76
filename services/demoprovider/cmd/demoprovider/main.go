// Command demoprovider is a stand-in practice system for trying clinicchat:
//
//	demoprovider [flags]       serves clinicchat.artifact.v1.ArtifactProviderService
//	                           (point delivery's --artifact-provider-addr at it)
//	demoprovider seed [flags]  fills the demo practice through the preferences
//	                           service (dev mode only) and exits
//
// Every flag can also be set as CLINICCHAT_<FLAG> (dashes as underscores).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	artifactv1 "github.com/clinicchat/clinicchat/proto/clinicchat/artifact/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/clinicchat/clinicchat/services/demoprovider"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/svcmain"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "demoprovider:", err)
		os.Exit(1)
	}
}

type config struct {
	svcmain.Common
	PreferencesAddr string
	// A practice system is called with clinicchat's own credential over TLS
	// (never a user's token): the token it accepts and its certificate.
	ServiceTokenFile string
	TLSCertFile      string
	TLSKeyFile       string
}

func (c *config) flags(fs *flag.FlagSet, seed bool) {
	fs.StringVar(&c.JWKSURL, "jwks-url", "", "issuer JWKS URL for verifying bearer tokens")
	fs.StringVar(&c.JWTIssuer, "jwt-issuer", "", "required iss claim")
	fs.StringVar(&c.JWTAudience, "jwt-audience", "", "required aud claim")
	fs.StringVar(&c.DevSigningKey, "dev-signing-key-file", "", "dev only: HS256 key file (instead of --jwks-url)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	if seed {
		fs.StringVar(&c.PreferencesAddr, "preferences-addr", "preferences:9090", "preferences service gRPC address")
		c.TLS.ClientFlags(fs, "") // the services' TLS, when they serve it
		return
	}
	fs.StringVar(&c.GRPCAddr, "grpc-addr", ":9090", "gRPC listen address")
	fs.StringVar(&c.ServiceTokenFile, "service-token-file", "", "file holding the one bearer token accepted: the delivery service's own credential (its --artifact-provider-token-file)")
	fs.StringVar(&c.TLSCertFile, "tls-cert-file", "", "PEM certificate served to callers (TLS)")
	fs.StringVar(&c.TLSKeyFile, "tls-key-file", "", "the certificate's PEM key")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 20*time.Second, "how long in-flight calls may finish on SIGTERM")
}

func run(args []string) error {
	seed := len(args) > 0 && args[0] == "seed"
	if seed {
		args = args[1:]
	}
	var cfg config
	fs := flag.NewFlagSet("demoprovider", flag.ContinueOnError)
	cfg.flags(fs, seed)
	if err := svcmain.Parse(fs, args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if seed {
		return runSeed(ctx, cfg)
	}
	return serve(ctx, cfg)
}

// runSeed seeds the demo practice; it needs the dev signing key, since it
// signs the practice system's and the patients' tokens itself.
func runSeed(ctx context.Context, cfg config) error {
	if cfg.DevSigningKey == "" || cfg.JWKSURL != "" {
		return errors.New("seed: dev mode only: --dev-signing-key-file is required (and no --jwks-url)")
	}
	key, err := os.ReadFile(cfg.DevSigningKey)
	if err != nil {
		return fmt.Errorf("dev signing key: %w", err)
	}
	if err := cfg.TLS.Validate(); err != nil {
		return err
	}
	opts, err := cfg.TLS.DialOptions()
	if err != nil {
		return err
	}
	cc, err := grpcx.Dial(cfg.PreferencesAddr, opts...)
	if err != nil {
		return fmt.Errorf("--preferences-addr: %w", err)
	}
	defer func() { _ = cc.Close() }()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	seeded, err := demoprovider.Seed(ctx, cc, &auth.DevIssuer{Key: key, Issuer: auth.DevIssuerName})
	if err != nil {
		return err
	}
	if seeded {
		fmt.Println("demo practice seeded")
	} else {
		fmt.Println("demo practice already there")
	}
	return nil
}

func serve(ctx context.Context, cfg config) error {
	var problems []error
	if cfg.ServiceTokenFile == "" {
		problems = append(problems, errors.New("--service-token-file is required: delivery calls with its own credential, never a user's token"))
	}
	if cfg.TLSCertFile == "" || cfg.TLSKeyFile == "" {
		problems = append(problems, errors.New("--tls-cert-file and --tls-key-file are required: delivery calls practice systems over TLS only"))
	}
	if err := errors.Join(problems...); err != nil {
		return err
	}
	token, err := os.ReadFile(cfg.ServiceTokenFile)
	if err != nil {
		return fmt.Errorf("--service-token-file: %w", err)
	}
	creds, err := credentials.NewServerTLSFromFile(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return fmt.Errorf("--tls-cert-file: %w", err)
	}
	log, err := svcmain.NewLogger(cfg.LogLevel, "demoprovider")
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	srv := grpcx.NewServer(log, demoprovider.ServiceVerifier{Token: strings.TrimSpace(string(token))}, grpc.Creds(creds))
	artifactv1.RegisterArtifactProviderServiceServer(srv.Server, &demoprovider.Provider{})
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return err
	}
	srv.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	log.Info("serving", zap.String("grpc_addr", lis.Addr().String()))
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Serve(lis) })
	g.Go(func() error {
		<-gctx.Done()
		srv.Shutdown(cfg.DrainTimeout)
		return nil
	})
	return g.Wait()
}
