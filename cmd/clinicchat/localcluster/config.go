// Package localcluster runs clinicchat's production shape on one machine:
// every service (conversation, delivery, attachment, preferences, audit), the
// gateway and the demo ArtifactProvider as separate processes on loopback
// ports, against a PostgreSQL server (one database per service) and a NATS
// server (given, or started from the nats-server of the version in go.mod).
// deploy/local/up runs it; its tests start the same stack.
package localcluster

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/internal/godebug"
)

// Config is a local cluster's configuration.
type Config struct {
	// PGURL is a PostgreSQL server URL; its database is only used to create
	// one database per service, named DBPrefix_<service>.
	PGURL    string
	DBPrefix string
	// NATSURL is a NATS server with JetStream; empty: start one under DataDir.
	NATSURL string
	// DataDir holds the dev keys, attachment blobs, NATS store and logs.
	DataDir  string
	HTTPAddr string
	GRPCAddr string
	// Dev runs the dev token issuer and seeds the demo practice; without it
	// JWKSURL and JWTIssuer are required.
	Dev                  bool
	JWKSURL              string
	JWTIssuer            string
	JWTAudience          string
	DeliveryReplicas     int
	ArchiveAfter         time.Duration
	ArchiveSweepInterval time.Duration
	// NoNotificationRequests: conversation publishes no notification
	// requests for an outside notifier (its --notification-requests=false).
	NoNotificationRequests bool
	LogLevel               string
	// DBConns is each service process's PostgreSQL connections (0: 8).
	DBConns int
	// BinDir holds the binaries (Build); empty: build them into DataDir/bin.
	BinDir string
	// PlaintextServices turns service-to-service TLS off. By default every
	// service serves mutual TLS with a certificate of a local CA generated
	// under DataDir/tls, and every client of it (peers, the gateway) calls
	// with its own.
	PlaintextServices bool
	// ServiceArgs are extra flags for every service process (e.g. load
	// tests raise the per-identity --limit-sends-per-second).
	ServiceArgs []string
	// GatewayReplicas is the number of gateway processes (0 means 1); the
	// first listens on HTTPAddr and GRPCAddr, the others on free loopback
	// ports (Cluster.GatewayHTTPAddrs).
	GatewayReplicas int
	// Env is extra environment for every process ("OTEL_EXPORTER_OTLP_ENDPOINT=…"
	// turns tracing on; CLINICCHAT_* settings are never passed on).
	Env []string
	// AllCPUs runs every process with Go's default GOMAXPROCS (every CPU of
	// the machine) instead of the one its CPU limit in deploy/k8s gives it in
	// a pod (CPULimit).
	AllCPUs bool
	// SysmonDeepSleep leaves the Go runtime's system monitor as Go sets it:
	// it sleeps deeply while every P of its process is idle, and the next
	// system call wakes it. By default the cluster gives every process
	// SysmonGODEBUG instead, as deploy/k8s does (see there).
	SysmonDeepSleep bool
	// GOGC is the collector's GOGC for every process the cluster starts
	// (0: Go's default, 100); $GOGC, when set, wins. Flags default it to
	// DefaultGOGC.
	GOGC int
	// Debug gives every clinicchat process an operator listener
	// (--debug-addr: /debug/pprof and the runtime's metrics) and the NATS
	// server its monitoring port (/varz, /jsz), each on a free loopback
	// port (Cluster.DebugAddrs), for profiling a load run.
	Debug bool
}

// Flags registers the flags of deploy/local/up.
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.PGURL, "pg-url", "postgres://postgres@127.0.0.1:5432/postgres", "PostgreSQL server: one database per service is created there")
	fs.StringVar(&c.DBPrefix, "db-prefix", "clinicchat", "database names are <db-prefix>_<service>")
	fs.StringVar(&c.NATSURL, "nats-url", "", "NATS server with JetStream (2.10+); empty: start the nats-server of go.mod's version under --data-dir")
	fs.StringVar(&c.DataDir, "data-dir", "./.clinicchat-local", "dev keys, attachment blobs, the NATS store, binaries and logs")
	fs.StringVar(&c.HTTPAddr, "http-addr", "127.0.0.1:8080", "the gateway's HTTP API, SSE and web client")
	fs.StringVar(&c.GRPCAddr, "grpc-addr", "127.0.0.1:9090", "the gateway's public gRPC edge (every public service, health, reflection)")
	fs.BoolVar(&c.Dev, "dev", true, "dev token issuer (POST /v1/dev/tokens) and the demo practice; --dev=false needs --jwks-url and --jwt-issuer")
	fs.StringVar(&c.JWKSURL, "jwks-url", "", "without --dev: the token issuer's JWKS URL")
	fs.StringVar(&c.JWTIssuer, "jwt-issuer", "", "without --dev: the required iss claim")
	fs.StringVar(&c.JWTAudience, "jwt-audience", "", "without --dev: the required aud claim")
	fs.IntVar(&c.DeliveryReplicas, "delivery-replicas", 1, "delivery processes behind the gateway (1-4)")
	fs.DurationVar(&c.ArchiveAfter, "archive-after", 8760*time.Hour, "archive a conversation with no message for this long")
	fs.DurationVar(&c.ArchiveSweepInterval, "archive-sweep-interval", time.Hour, "how often the archive sweeper looks")
	fs.BoolFunc("notification-requests", "conversation publishes a notification request for each recipient of a new message, for an outside notifier; false where none runs (default true)",
		func(v string) error {
			on, err := strconv.ParseBool(v)
			c.NoNotificationRequests = !on
			return err
		})
	fs.StringVar(&c.LogLevel, "log-level", "info", "the processes' log level: debug, info, warn or error")
	fs.BoolVar(&c.PlaintextServices, "plaintext-services", false, "no TLS between the processes (default: mutual TLS with a local CA and certificates under --data-dir/tls)")
	fs.StringVar(&c.BinDir, "bin-dir", "", "use the binaries already built there (empty: go build them into --data-dir/bin)")
	fs.IntVar(&c.DBConns, "db-conns", 8, "PostgreSQL connections of each service process (all of them together stay under the server's max_connections)")
	fs.BoolVar(&c.AllCPUs, "all-cpus", false, "run every process with Go's default GOMAXPROCS (every CPU) instead of its CPU limit in deploy/k8s (1, the gateway 2), which Go reads in a pod; $GOMAXPROCS, when set, wins either way")
	fs.BoolVar(&c.SysmonDeepSleep, "sysmon-deep-sleep", false, "leave every process's Go system monitor as Go sets it (deep sleep while the process is idle, woken by its next system call) instead of GODEBUG="+SysmonGODEBUG+", as in deploy/k8s; $GODEBUG with schedtrace wins either way")
	fs.IntVar(&c.GOGC, "gogc", DefaultGOGC, "GOGC of every process the cluster starts (0: Go's default, 100); $GOGC, when set, wins")
	fs.BoolVar(&c.Debug, "debug", false, "serve pprof on every clinicchat process (--debug-addr) and NATS monitoring (/varz, /jsz) on free loopback ports, listed at start as <process>-debug=ADDR")
	fs.Func("service-flag", "an extra flag for every service process, repeatable (e.g. --service-flag=--limit-sends-per-second=1000 for a load test)", func(v string) error {
		if !strings.HasPrefix(v, "-") {
			return fmt.Errorf("%q is not a flag (it starts with -)", v)
		}
		c.ServiceArgs = append(c.ServiceArgs, v)
		return nil
	})
}

// DefaultGOGC is --gogc's default. Each service's live heap is a few MiB,
// so at Go's default (100) the collector ran every ~3 MiB allocated: 8–20
// cycles per 1,000 messages in each busy process at 8 senders, ~0.5 ms of GC
// CPU per message over the stack by the runtime's own estimate; at 400, 1–4
// cycles and ~0.06–0.1 ms, for heaps of ~15 MiB instead of ~6 (BENCHMARKS.md,
// dist15).
const DefaultGOGC = 400

// SysmonGODEBUG is the GODEBUG setting every Go process of the stack runs
// with, here and in deploy/k8s (godebug.Steady: why, and what it costs).
const SysmonGODEBUG = godebug.Steady

var dbPrefix = regexp.MustCompile(`^[a-z][a-z0-9_]{0,40}$`)

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if u, err := url.Parse(c.PGURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		errs = append(errs, errors.New("--pg-url must be a postgres:// URL"))
	}
	if !dbPrefix.MatchString(c.DBPrefix) {
		errs = append(errs, errors.New("--db-prefix must be lower-case letters, digits and _ (starting with a letter, at most 41)"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("--data-dir is required"))
	}
	if c.HTTPAddr == "" || c.GRPCAddr == "" {
		errs = append(errs, errors.New("--http-addr and --grpc-addr are required"))
	}
	if !c.Dev && (c.JWKSURL == "" || c.JWTIssuer == "") {
		errs = append(errs, errors.New("without --dev, --jwks-url and --jwt-issuer are required"))
	}
	if c.DeliveryReplicas < 1 || c.DeliveryReplicas > 4 {
		errs = append(errs, fmt.Errorf("--delivery-replicas must be 1 to 4 (got %d)", c.DeliveryReplicas))
	}
	if c.GatewayReplicas < 0 || c.GatewayReplicas > 4 {
		errs = append(errs, fmt.Errorf("the gateway replicas must be 0 to 4 (got %d)", c.GatewayReplicas))
	}
	if c.GOGC < 0 || c.GOGC > 10000 {
		errs = append(errs, fmt.Errorf("--gogc must be 0 to 10000 (got %d)", c.GOGC))
	}
	if c.DBConns < 0 || c.DBConns > 100 {
		errs = append(errs, fmt.Errorf("--db-conns must be 1 to 100 (got %d)", c.DBConns))
	}
	if c.ArchiveAfter <= 0 || c.ArchiveSweepInterval <= 0 {
		errs = append(errs, errors.New("--archive-after and --archive-sweep-interval must be positive"))
	}
	return errors.Join(errs...)
}
