package gateway

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// BinaryConfig is the configuration of the standalone gateway binary
// (gateway/cmd/gateway): listen and upstream addresses, NATS, token
// verification and the gateway's own Config.
type BinaryConfig struct {
	HTTPAddr string
	// GRPCAddr serves the public gRPC edge (GRPCEdge) when set.
	GRPCAddr string
	// Upstream gRPC addresses, in the order of UpstreamNames.
	Upstreams [5]string
	// UpstreamTLS is TLS to the upstream services (their --tls-* files).
	UpstreamTLS grpcx.TLSConfig
	// HTTPTLSCertFile and HTTPTLSKeyFile make the HTTP listener and the
	// public gRPC edge serve TLS (behind an ingress that re-encrypts, so a
	// bearer token never crosses the cluster network in clear).
	HTTPTLSCertFile, HTTPTLSKeyFile string
	NATS                            natsx.Config
	NATSPrefix                      string
	JWKSURL                         string
	JWTIssuer                       string
	JWTAudience                     string
	DevSigningKey                   string
	Dev                             bool
	SeedDemo                        bool
	DrainTimeout                    time.Duration
	LogLevel                        string
	DebugAddr                       string
	// MetricsAddr serves Prometheus /metrics (off when empty); /metrics on
	// the HTTP address stays for existing scrapers.
	MetricsAddr string
	Gateway     Config
}

// UpstreamNames are the upstream services, as named in their --<name>-addr flags.
var UpstreamNames = [5]string{"conversation", "delivery", "preferences", "attachment", "audit"}

// Flags registers every flag of the binary.
func (c *BinaryConfig) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.HTTPAddr, "http-addr", ":8080", "HTTP listen address")
	fs.StringVar(&c.GRPCAddr, "grpc-addr", "", "public gRPC address for practice systems: every public service, health and reflection (empty: off)")
	for i, name := range UpstreamNames {
		fs.StringVar(&c.Upstreams[i], name+"-addr", name+":9090",
			"gRPC address of the "+name+" service: host:port (every address DNS gives, round-robin) or a comma-separated list of replicas")
	}
	natsx.ConnFlags(fs, &c.NATS)
	c.UpstreamTLS.ClientFlags(fs, "upstream-")
	fs.StringVar(&c.HTTPTLSCertFile, "http-tls-cert-file", "", "PEM certificate served on --http-addr and --grpc-addr (TLS; re-read when it changes; empty: plaintext)")
	fs.StringVar(&c.HTTPTLSKeyFile, "http-tls-key-file", "", "the --http-tls-cert-file's PEM key")
	natsx.PrefixFlag(fs, &c.NATSPrefix)
	fs.StringVar(&c.JWKSURL, "jwks-url", "", "issuer JWKS URL for verifying bearer tokens")
	fs.StringVar(&c.JWTIssuer, "jwt-issuer", "", "required iss claim")
	fs.StringVar(&c.JWTAudience, "jwt-audience", "", "required aud claim")
	fs.StringVar(&c.DevSigningKey, "dev-signing-key-file", "", "dev only: HS256 key file (instead of --jwks-url)")
	fs.BoolVar(&c.Dev, "dev", false, "dev only: serve POST /v1/dev/tokens, signing with --dev-signing-key-file")
	fs.BoolVar(&c.SeedDemo, "seed-demo", false, "dev only (with --dev): fill the demo practice through the preferences service at start, once")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 20*time.Second, "how long requests and streams may finish on SIGTERM")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.DebugAddr, "debug-addr", "", "operator-only listener for pprof and runtime metrics (off when empty)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "operator listener serving Prometheus /metrics, e.g. :9464 (off when empty)")
	c.Gateway.Flags(fs)
}

// Validate reports every problem at once.
func (c *BinaryConfig) Validate() error {
	var errs []error
	if c.HTTPAddr == "" {
		errs = append(errs, errors.New("--http-addr is required"))
	}
	for i, name := range UpstreamNames {
		if c.Upstreams[i] == "" {
			errs = append(errs, fmt.Errorf("--%s-addr is required", name))
		} else if _, _, err := grpcx.Target(c.Upstreams[i]); err != nil {
			errs = append(errs, fmt.Errorf("--%s-addr: %w", name, err))
		}
	}
	if err := c.NATS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.UpstreamTLS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if (c.HTTPTLSCertFile == "") != (c.HTTPTLSKeyFile == "") {
		errs = append(errs, errors.New("--http-tls-cert-file and --http-tls-key-file go together"))
	}
	if c.JWKSURL == "" && c.DevSigningKey == "" {
		errs = append(errs, errors.New("one of --jwks-url or --dev-signing-key-file is required"))
	}
	if c.JWKSURL != "" && c.JWTIssuer == "" {
		errs = append(errs, errors.New("--jwt-issuer is required with --jwks-url"))
	}
	if c.Dev && (c.DevSigningKey == "" || c.JWKSURL != "") {
		errs = append(errs, errors.New("--dev needs --dev-signing-key-file and no --jwks-url"))
	}
	if c.SeedDemo && !c.Dev {
		errs = append(errs, errors.New("--seed-demo needs --dev"))
	}
	if c.DrainTimeout <= 0 {
		errs = append(errs, errors.New("--drain-timeout must be positive"))
	}
	if err := c.Gateway.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
