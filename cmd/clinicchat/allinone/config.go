// Package allinone runs every clinicchat service, the gateway, an embedded
// NATS server with JetStream and embedded SQLite files in one process: the
// developer's and small clinic's deployment. The services call each other
// through the gRPC server's in-process channel (grpcx.Server.InProcess: no
// HTTP/2, no protobuf encoding), whose every call runs the server's
// interceptors, so authentication, authorization, rate limits, metrics,
// tracing and error mapping run exactly as in production; practice systems
// reach the same gRPC server on --grpc-addr.
package allinone

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/clinicchat/clinicchat/services/platform/ratelimit"
)

// Config is the all-in-one's configuration.
type Config struct {
	HTTPAddr string
	GRPCAddr string
	DataDir  string
	Dev      bool
	// DevAllowNonLoopback lets dev mode (anyone may mint any token) listen
	// on an address other than loopback. Never in production.
	DevAllowNonLoopback bool
	// Limits are the per-identity limits.
	Limits ratelimit.Config
	// PendingUploadQuota bounds the bytes of uploads an identity holds that
	// no message carries yet (0: the attachment service's default).
	PendingUploadQuota   int64
	ArchiveAfter         time.Duration
	ArchiveSweepInterval time.Duration
	NATSListen           string
	StepUpWindow         time.Duration
	DrainTimeout         time.Duration
	LogLevel             string
	// DebugAddr serves pprof and runtime metrics for operators (off when empty).
	DebugAddr string
	// MetricsAddr serves Prometheus /metrics for operators (off when
	// empty); the HTTP address serves the same on /metrics.
	MetricsAddr string
	// JWKS settings for production-style token verification (Dev=false).
	JWKSURL     string
	JWTIssuer   string
	JWTAudience string
	// Event-stream limits (gateway.Config; 0 = the gateway's defaults).
	MaxStreamsPerIdentity int
	MaxStreams            int
	// KeysDir holds the keys that must not sit with the data: the audit
	// checkpoint signing key and the attachments' key-encryption key
	// (default: <data-dir>-keys beside the data dir; dev mode generates them).
	KeysDir string
	// AuditSigningKeyFile and AttachmentKEKFile override the files in KeysDir
	// (required without --dev unless KeysDir holds them).
	AuditSigningKeyFile string
	AttachmentKEKFile   string
	// AuditWitnessFile receives every signed audit checkpoint (default:
	// <data-dir>-witness.jsonl beside the data dir).
	AuditWitnessFile string
	// AdminSocket is the Unix socket `clinicchat backup` asks for a
	// snapshot (default: <data-dir>/admin.sock; mode 0600).
	AdminSocket string
	// MemoryLimit is the Go runtime's soft memory limit in bytes
	// (runtime/debug.SetMemoryLimit), raised while the live heap needs
	// more (memoryGovernor); 0: leave it to GOMEMLIMIT, if set. The flag's
	// default is DefaultMemoryLimit unless GOMEMLIMIT is set.
	MemoryLimit int64
	// GCPercent is the collector's pace (GOGC); 0: DefaultGCPercent while
	// a memory limit caps the heap, else Go's default ($GOGC, if set, wins
	// over 0).
	GCPercent int
	// GoMaxProcs is the Go scheduler's processors (runtime.GOMAXPROCS); 0:
	// the CPUs the runtime sees plus ExtraProcs, unless $GOMAXPROCS is set
	// (see applyGoMaxProcs).
	GoMaxProcs int
}

// Flags registers the flags (SPEC.md section 4).
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.HTTPAddr, "http-addr", "127.0.0.1:8080", "HTTP/JSON API, SSE and web client address")
	fs.StringVar(&c.GRPCAddr, "grpc-addr", "127.0.0.1:9090", "public gRPC address for practice systems (health and reflection included)")
	fs.StringVar(&c.DataDir, "data-dir", "./.clinicchat", "where the SQLite files, blobs, NATS store and keys live")
	fs.BoolVar(&c.Dev, "dev", true, "dev mode: token issuer at POST /v1/dev/tokens, the seeded demo practice and the demo artifact provider (loopback addresses only)")
	fs.BoolVar(&c.DevAllowNonLoopback, "dev-allow-non-loopback", false,
		"DANGEROUS: let dev mode listen on non-loopback addresses, where anyone who reaches it can mint a token for any practice and role")
	fs.Int64Var(&c.PendingUploadQuota, "pending-upload-quota", 0, "bytes of uploads not yet on a message that one identity may hold (0: 200 MiB)")
	c.Limits.Flags(fs)
	fs.DurationVar(&c.ArchiveAfter, "archive-after", 8760*time.Hour, "archive a conversation with no message for this long")
	fs.DurationVar(&c.ArchiveSweepInterval, "archive-sweep-interval", time.Hour, "how often to look for idle conversations")
	fs.StringVar(&c.NATSListen, "nats-listen", "", "also serve the embedded NATS on this address (default: in-process only)")
	fs.DurationVar(&c.StepUpWindow, "step-up-window", 5*time.Minute, "how recently a patient must have signed in to see a sensitive message")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 20*time.Second, "how long in-flight calls may finish on SIGTERM")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.DebugAddr, "debug-addr", "", "operator-only listener for pprof and runtime metrics, e.g. 127.0.0.1:6060 (off when empty)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "operator listener serving Prometheus /metrics, e.g. :9464 (off when empty)")
	fs.StringVar(&c.JWKSURL, "jwks-url", "", "without --dev: the issuer's JWKS URL")
	fs.StringVar(&c.JWTIssuer, "jwt-issuer", "", "without --dev: the required iss claim")
	fs.StringVar(&c.JWTAudience, "jwt-audience", "", "without --dev: the required aud claim")
	fs.IntVar(&c.MaxStreamsPerIdentity, "max-streams-per-identity", 10, "concurrent /v1/events streams one identity may hold")
	fs.IntVar(&c.MaxStreams, "max-streams", 20000, "concurrent /v1/events streams this process serves")
	fs.StringVar(&c.KeysDir, "keys-dir", "", "where the audit signing key and the attachment key-encryption key live, apart from the data (default: <data-dir>-keys)")
	fs.StringVar(&c.AuditSigningKeyFile, "audit-signing-key-file", "", "audit checkpoint signing key (default: <keys-dir>/audit-signing.key, generated in dev mode)")
	fs.StringVar(&c.AttachmentKEKFile, "attachment-kek-file", "", "attachment key-encryption key (default: <keys-dir>/attachment.kek, generated in dev mode)")
	fs.StringVar(&c.AdminSocket, "admin-socket", "", "Unix socket (mode 0600) where clinicchat backup asks this process for a snapshot (default: <data-dir>/admin.sock)")
	if os.Getenv("GOMEMLIMIT") == "" {
		c.MemoryLimit = DefaultMemoryLimit
	}
	fs.Func("memory-limit", fmt.Sprintf("soft limit of the Go runtime's memory, e.g. 80MiB (the process adds ~36 MiB of program and ~8-15 MiB of SQLite's memory): "+
		"the garbage collector works harder near it; it rises by 3 bytes per byte of goroutine stacks (open event streams), and while the live heap needs more "+
		"(at least half the live heap and stacks to allocate into). 0: none (the heap may grow to twice the live heap). Default %dMiB, or GOMEMLIMIT if set (then fixed); BENCHMARKS.md, mem15 and mem22", DefaultMemoryLimit>>20),
		func(v string) error {
			n, err := ParseBytes(v)
			c.MemoryLimit = n
			return err
		})
	fs.IntVar(&c.GCPercent, "gogc", 0, fmt.Sprintf("the garbage collector's pace, as GOGC (0: %d while a memory limit caps the heap, "+
		"else Go's 100; $GOGC, if set, wins over 0)", DefaultGCPercent))
	fs.IntVar(&c.GoMaxProcs, "gomaxprocs", 0, fmt.Sprintf("Go scheduler processors (0: the CPUs Go sees plus %d, for the goroutines blocked in SQLite's "+
		"file writes and fsyncs; $GOMAXPROCS, if set, wins over 0)", ExtraProcs))
	fs.StringVar(&c.AuditWitnessFile, "audit-witness-file", "", "file that witnesses every signed audit checkpoint (default: <data-dir>-witness.jsonl)")
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var problems []error
	if c.HTTPAddr == "" {
		problems = append(problems, errors.New("--http-addr is required"))
	}
	if c.GRPCAddr == "" {
		problems = append(problems, errors.New("--grpc-addr is required"))
	}
	if c.DataDir == "" {
		problems = append(problems, errors.New("--data-dir is required"))
	}
	if c.ArchiveAfter <= 0 || c.ArchiveSweepInterval <= 0 {
		problems = append(problems, errors.New("--archive-after and --archive-sweep-interval must be positive"))
	}
	if c.StepUpWindow <= 0 {
		problems = append(problems, errors.New("--step-up-window must be positive"))
	}
	if !c.Dev && (c.JWKSURL == "" || c.JWTIssuer == "" || c.JWTAudience == "") {
		problems = append(problems, errors.New("without --dev, --jwks-url, --jwt-issuer and --jwt-audience are required"))
	}
	if c.Dev && !c.DevAllowNonLoopback {
		for flagName, addr := range map[string]string{"--http-addr": c.HTTPAddr, "--grpc-addr": c.GRPCAddr, "--nats-listen": c.NATSListen} {
			if addr != "" && !IsLoopback(addr) {
				problems = append(problems, fmt.Errorf("%s %q is not a loopback address: dev mode lets anyone mint tokens, "+
					"so it listens on 127.0.0.1 or ::1 only (run with --dev=false and --jwks-url for a network, "+
					"or --dev-allow-non-loopback if you really mean it)", flagName, addr))
			}
		}
	}
	if err := c.Limits.Validate(); err != nil {
		problems = append(problems, err)
	}
	if c.GCPercent < 0 {
		problems = append(problems, errors.New("--gogc must not be negative"))
	}
	if c.MemoryLimit < 0 {
		problems = append(problems, errors.New("--memory-limit must not be negative"))
	}
	if c.GoMaxProcs < 0 {
		problems = append(problems, errors.New("--gomaxprocs must not be negative"))
	}
	if c.PendingUploadQuota < 0 {
		problems = append(problems, errors.New("--pending-upload-quota must not be negative"))
	}
	return errors.Join(problems...)
}

// ParseBytes reads a size as GOMEMLIMIT writes it: a whole number of
// bytes with an optional B, KiB, MiB or GiB suffix ("96MiB").
func ParseBytes(s string) (int64, error) {
	v := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}} {
		if rest, ok := strings.CutSuffix(v, u.suffix); ok {
			v, mult = rest, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is not a size: want bytes, or a whole number of KiB, MiB or GiB (e.g. 96MiB)", s)
	}
	return n * mult, nil
}

// IsLoopback reports whether a listen address (host:port) binds loopback
// only: 127.0.0.0/8, ::1 or "localhost". An empty host or 0.0.0.0 binds
// every interface.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c *Config) path(name string) string { return filepath.Join(c.DataDir, name) }

// keysDir is --keys-dir, by default a sibling of the data dir.
func (c *Config) keysDir() string {
	if c.KeysDir != "" {
		return c.KeysDir
	}
	return filepath.Clean(c.DataDir) + "-keys"
}

func (c *Config) auditKeyFile() string {
	if c.AuditSigningKeyFile != "" {
		return c.AuditSigningKeyFile
	}
	return filepath.Join(c.keysDir(), "audit-signing.key")
}

func (c *Config) kekFile() string {
	if c.AttachmentKEKFile != "" {
		return c.AttachmentKEKFile
	}
	return filepath.Join(c.keysDir(), "attachment.kek")
}

func (c *Config) adminSocket() string {
	if c.AdminSocket != "" {
		return c.AdminSocket
	}
	return c.path("admin.sock")
}

func (c *Config) witnessFile() string {
	if c.AuditWitnessFile != "" {
		return c.AuditWitnessFile
	}
	return filepath.Clean(c.DataDir) + "-witness.jsonl"
}

// String is the configuration without secrets, for the start-up log.
func (c *Config) String() string {
	return fmt.Sprintf("http=%s grpc=%s data_dir=%s dev=%t dev_allow_non_loopback=%t archive_after=%s sweep=%s nats_listen=%q",
		c.HTTPAddr, c.GRPCAddr, c.DataDir, c.Dev, c.DevAllowNonLoopback, c.ArchiveAfter, c.ArchiveSweepInterval, c.NATSListen)
}
