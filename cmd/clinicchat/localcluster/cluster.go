package localcluster

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/internal/godebug"
	"github.com/clinicchat/clinicchat/services/attachment"
	"github.com/clinicchat/clinicchat/services/audit"
	"github.com/clinicchat/clinicchat/services/demoprovider"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
)

// Services are the five gRPC services, each with a database of its own.
var Services = []string{"preferences", "conversation", "delivery", "attachment", "audit"}

// packages are the binaries a cluster runs, by binary name.
var packages = map[string]string{
	"nats-server":  "github.com/nats-io/nats-server/v2",
	"gateway":      "github.com/clinicchat/clinicchat/gateway/cmd/gateway",
	"demoprovider": "github.com/clinicchat/clinicchat/services/demoprovider/cmd/demoprovider",
	"preferences":  "github.com/clinicchat/clinicchat/services/preferences/cmd/preferences",
	"conversation": "github.com/clinicchat/clinicchat/services/conversation/cmd/conversation",
	"delivery":     "github.com/clinicchat/clinicchat/services/delivery/cmd/delivery",
	"attachment":   "github.com/clinicchat/clinicchat/services/attachment/cmd/attachment",
	"audit":        "github.com/clinicchat/clinicchat/services/audit/cmd/audit",
}

// Build compiles every binary into dir with `go build` (run inside the
// clinicchat module, so nats-server is the version go.mod requires).
func Build(ctx context.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, name := range slices.Sorted(maps.Keys(packages)) {
		args = append(args, packages[name])
	}
	out, err := exec.CommandContext(ctx, "go", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build: %w\n%s", err, out)
	}
	return nil
}

// Cluster is a running local cluster.
type Cluster struct {
	cfg    Config
	logDir string
	// HTTPAddr and GRPCAddr are the gateway's bound addresses.
	HTTPAddr, GRPCAddr string
	// GatewayHTTPAddrs are every gateway's HTTP address (Config's
	// GatewayReplicas), HTTPAddr first; the processes are "gateway",
	// "gateway-2", ….
	GatewayHTTPAddrs []string
	// NATSURL is the NATS server the processes use.
	NATSURL string
	// DevIssuer signs tokens in dev mode (nil otherwise).
	DevIssuer *auth.DevIssuer
	// DatabaseDSN is each service's database.
	DatabaseDSN map[string]string
	// Addrs is each process's gRPC address ("delivery-1", …; "delivery" is
	// the comma-separated list of replicas).
	Addrs map[string]string
	// MetricsAddrs is each clinicchat process's --metrics-addr (Prometheus
	// /metrics): the services by process name, and "gateway".
	MetricsAddrs map[string]string
	// DebugAddrs is, with Config.Debug, each clinicchat process's
	// --debug-addr (pprof) by process name, "nats" the NATS server's
	// monitoring address (/varz, /jsz, /connz) and "nats-pprof" its
	// /debug/pprof.
	DebugAddrs map[string]string

	// tls is each process's TLS files (empty with PlaintextServices).
	tls map[string]grpcx.TLSConfig

	mu      sync.Mutex
	procs   map[string]*proc
	order   []string
	failed  chan struct{}
	failErr error
	stopped bool
	once    sync.Once

	// ports is every port freeAddr has handed out: each is released
	// before its process binds it, so without this two processes could be
	// given the same one (CI, Dec 1: a process exited at start-up).
	ports map[string]bool
}

type proc struct {
	name string
	bin  string
	args []string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	// expected is set before the cluster stops or kills the process itself.
	expected bool
}

// Start creates the databases, starts every process, waits until the
// gateway is ready and seeds the demo practice (dev mode). progress gets a
// line per step (nil: none). On error everything started is stopped.
func Start(ctx context.Context, cfg Config, progress io.Writer) (c *Cluster, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("configuration:\n%w", err)
	}
	if progress == nil {
		progress = io.Discard
	}
	if cfg.DBConns == 0 {
		cfg.DBConns = 8
	}
	say := func(format string, args ...any) { fmt.Fprintf(progress, format+"\n", args...) }
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	cfg.DataDir = dataDir
	c = &Cluster{cfg: cfg, logDir: filepath.Join(dataDir, "logs"), procs: map[string]*proc{}, failed: make(chan struct{}),
		DatabaseDSN: map[string]string{}, Addrs: map[string]string{}, MetricsAddrs: map[string]string{}, DebugAddrs: map[string]string{}, ports: map[string]bool{}}
	for _, d := range []string{c.logDir, c.path("blobs")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	defer func() {
		if err != nil {
			_ = c.Stop()
			c = nil
		}
	}()

	if cfg.BinDir == "" {
		cfg.BinDir = c.path("bin")
		say("building the binaries into %s", cfg.BinDir)
		if err := Build(ctx, cfg.BinDir); err != nil {
			return c, err
		}
		c.cfg.BinDir = cfg.BinDir
	}
	say("creating the databases %s_<service> on %s", cfg.DBPrefix, redact(cfg.PGURL))
	if err := c.createDatabases(ctx); err != nil {
		return c, err
	}

	// As the Kubernetes manifests do (an init container per service), the
	// schema is applied by `<service> migrate` before any server starts;
	// the servers run with --migrate-on-start=false and only check it.
	say("migrating the databases")
	if err := c.migrate(ctx); err != nil {
		return c, err
	}

	if c.NATSURL = cfg.NATSURL; c.NATSURL == "" {
		addr, err := c.freeAddr("127.0.0.1:0")
		if err != nil {
			return c, err
		}
		host, port, _ := net.SplitHostPort(addr)
		args := []string{"-a", host, "-p", port, "-js", "-sd", c.path("nats"), "--server_name", "clinicchat-local"}
		if cfg.Debug {
			if c.DebugAddrs["nats"], err = c.freeAddr("127.0.0.1:0"); err != nil {
				return c, err
			}
			if c.DebugAddrs["nats-pprof"], err = c.freeAddr("127.0.0.1:0"); err != nil {
				return c, err
			}
			_, mport, _ := net.SplitHostPort(c.DebugAddrs["nats"])
			_, pport, _ := net.SplitHostPort(c.DebugAddrs["nats-pprof"])
			args = append(args, "-m", mport, "--profile", pport)
		}
		if err := c.start("nats", "nats-server", args...); err != nil {
			return c, err
		}
		c.NATSURL = "nats://" + addr
		if err := c.waitTCP(ctx, addr); err != nil {
			return c, fmt.Errorf("nats-server: %w", err)
		}
		say("NATS started on %s (store %s)", c.NATSURL, c.path("nats"))
	}

	authArgs, err := c.authArgs()
	if err != nil {
		return c, err
	}
	// Every address is decided first: processes dial their peers lazily.
	for _, name := range []string{"preferences", "conversation", "attachment", "audit", "demoprovider"} {
		if c.Addrs[name], err = c.freeAddr("127.0.0.1:0"); err != nil {
			return c, err
		}
	}
	var replicas []string
	for i := range cfg.DeliveryReplicas {
		name := fmt.Sprintf("delivery-%d", i+1)
		if c.Addrs[name], err = c.freeAddr("127.0.0.1:0"); err != nil {
			return c, err
		}
		replicas = append(replicas, c.Addrs[name])
	}
	c.Addrs["delivery"] = strings.Join(replicas, ",")
	// Every clinicchat process serves Prometheus /metrics on a port of its own.
	for name := range c.Addrs {
		if name == "delivery" || name == "demoprovider" {
			continue // the replicas' list; the demo practice system has none
		}
		if c.MetricsAddrs[name], err = c.freeAddr("127.0.0.1:0"); err != nil {
			return c, err
		}
	}
	if c.MetricsAddrs["gateway"], err = c.freeAddr("127.0.0.1:0"); err != nil {
		return c, err
	}
	if cfg.Debug {
		for name := range c.MetricsAddrs {
			if c.DebugAddrs[name], err = c.freeAddr("127.0.0.1:0"); err != nil {
				return c, err
			}
		}
	}
	if c.HTTPAddr, err = c.freeAddr(cfg.HTTPAddr); err != nil {
		return c, fmt.Errorf("--http-addr: %w", err)
	}
	if c.GRPCAddr, err = c.freeAddr(cfg.GRPCAddr); err != nil {
		return c, fmt.Errorf("--grpc-addr: %w", err)
	}

	// The demo practice system is called as a real one is: over TLS, with
	// the delivery service's own credential (never a user's token).
	if err := c.providerCredentials(); err != nil {
		return c, fmt.Errorf("demo provider credentials: %w", err)
	}
	if err := c.serviceCerts(); err != nil {
		return c, fmt.Errorf("service certificates: %w", err)
	}
	if err := c.start("demoprovider", "demoprovider", "--grpc-addr", c.Addrs["demoprovider"], "--log-level", cfg.LogLevel,
		"--service-token-file", c.path("provider.token"), "--tls-cert-file", c.path("provider.crt"),
		"--tls-key-file", c.path("provider.key")); err != nil {
		return c, err
	}
	for _, svc := range Services {
		if svc == "delivery" {
			for i := range cfg.DeliveryReplicas {
				name := fmt.Sprintf("delivery-%d", i+1)
				if err := c.startService("delivery", name, authArgs); err != nil {
					return c, err
				}
			}
			continue
		}
		if err := c.startService(svc, svc, authArgs); err != nil {
			return c, err
		}
	}
	gw := []string{"--http-addr", c.HTTPAddr, "--grpc-addr", c.GRPCAddr, "--nats-url", c.NATSURL,
		"--log-level", cfg.LogLevel, "--drain-timeout", "5s", "--metrics-addr", c.MetricsAddrs["gateway"]}
	if a := c.DebugAddrs["gateway"]; a != "" {
		gw = append(gw, "--debug-addr", a)
	}
	for _, svc := range Services {
		gw = append(gw, "--"+svc+"-addr", c.Addrs[svc])
	}
	gw = append(gw, c.tlsArgs("gateway", "upstream-")...)
	if cfg.Dev {
		gw = append(gw, "--dev")
	}
	if err := c.start("gateway", "gateway", append(gw, authArgs...)...); err != nil {
		return c, err
	}
	c.GatewayHTTPAddrs = []string{c.HTTPAddr}
	if err := c.startGatewayReplicas(gw, authArgs); err != nil {
		return c, err
	}
	say("waiting for every service (logs in %s)", c.logDir)
	if err := c.waitReady(ctx); err != nil {
		return c, err
	}
	if cfg.Dev {
		seeded, err := c.seed(ctx)
		if err != nil {
			return c, fmt.Errorf("seed the demo practice: %w", err)
		}
		if seeded {
			say("seeded the demo practice")
		}
	}
	return c, nil
}

// startGatewayReplicas starts gateways 2…GatewayReplicas with the first
// one's flags (later flags win) on free loopback addresses.
func (c *Cluster) startGatewayReplicas(gw, authArgs []string) error {
	for i := 2; i <= c.cfg.GatewayReplicas; i++ {
		httpAddr, err := c.freeAddr("127.0.0.1:0")
		if err != nil {
			return err
		}
		grpcAddr, err := c.freeAddr("127.0.0.1:0")
		if err != nil {
			return err
		}
		name := fmt.Sprintf("gateway-%d", i)
		if c.MetricsAddrs[name], err = c.freeAddr("127.0.0.1:0"); err != nil {
			return err
		}
		args := append(slices.Concat(gw, authArgs), "--http-addr", httpAddr, "--grpc-addr", grpcAddr, "--metrics-addr", c.MetricsAddrs[name])
		if c.cfg.Debug {
			if c.DebugAddrs[name], err = c.freeAddr("127.0.0.1:0"); err != nil {
				return err
			}
			args = append(args, "--debug-addr", c.DebugAddrs[name])
		}
		if err := c.start(name, "gateway", args...); err != nil {
			return err
		}
		c.GatewayHTTPAddrs = append(c.GatewayHTTPAddrs, httpAddr)
	}
	return nil
}

func (c *Cluster) path(name string) string { return filepath.Join(c.cfg.DataDir, name) }

// keyPath is where a key that must not sit with the data lives: beside the
// data dir, as the all-in-one keeps its keys (<data-dir>-keys).
func (c *Cluster) keyPath(name string) string {
	dir := c.cfg.DataDir + "-keys"
	_ = os.MkdirAll(dir, 0o700)
	return filepath.Join(dir, name)
}

// providerCredentials makes the demo provider's self-signed certificate for
// 127.0.0.1 and the delivery service's token, once per data dir.
func (c *Cluster) providerCredentials() error {
	if _, err := os.Stat(c.path("provider.token")); err == nil {
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "clinicchat demo provider"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.path("provider.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(c.path("provider.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(c.path("provider.token"), []byte(rand.Text()), 0o600)
}

// authArgs are the token settings every process gets.
func (c *Cluster) authArgs() ([]string, error) {
	if !c.cfg.Dev {
		args := []string{"--jwks-url", c.cfg.JWKSURL, "--jwt-issuer", c.cfg.JWTIssuer}
		if c.cfg.JWTAudience != "" {
			args = append(args, "--jwt-audience", c.cfg.JWTAudience)
		}
		return args, nil
	}
	keyFile := c.path("dev-signing.key")
	key, err := os.ReadFile(keyFile)
	if errors.Is(err, os.ErrNotExist) || (err == nil && len(key) < 32) {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		err = os.WriteFile(keyFile, key, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("dev signing key: %w", err)
	}
	c.DevIssuer = &auth.DevIssuer{Key: key, Issuer: auth.DevIssuerName, TTL: 12 * time.Hour}
	return []string{"--dev-signing-key-file", keyFile}, nil
}

// serviceArgs are one service's flags: the common ones and its peers'.
func (c *Cluster) serviceArgs(svc, name string) ([]string, error) {
	args := []string{"--grpc-addr", c.Addrs[name], "--database-dsn", c.DatabaseDSN[svc], "--nats-url", c.NATSURL,
		"--log-level", c.cfg.LogLevel, "--drain-timeout", "5s", "--migrate-on-start=false",
		"--metrics-addr", c.MetricsAddrs[name]}
	if a := c.DebugAddrs[name]; a != "" {
		args = append(args, "--debug-addr", a)
	}
	switch svc {
	case "conversation":
		args = append(args, "--preferences-addr", c.Addrs["preferences"],
			"--archive-after", c.cfg.ArchiveAfter.String(), "--archive-sweep-interval", c.cfg.ArchiveSweepInterval.String(),
			"--notification-requests="+strconv.FormatBool(!c.cfg.NoNotificationRequests))
	case "delivery":
		args = append(args, "--conversation-addr", c.Addrs["conversation"], "--preferences-addr", c.Addrs["preferences"],
			"--attachment-addr", c.Addrs["attachment"], "--artifact-provider-addr", c.Addrs["demoprovider"],
			"--artifact-provider-ca-file", c.path("provider.crt"), "--artifact-provider-token-file", c.path("provider.token"))
	case "attachment":
		kek := c.keyPath("attachment.kek")
		if _, err := attachment.EnsureDevKEK(kek); err != nil {
			return nil, fmt.Errorf("attachment key-encryption key: %w", err)
		}
		args = append(args, "--conversation-addr", c.Addrs["conversation"], "--blob-dir", c.path("blobs"),
			"--attachment-kek-file", kek)
	case "audit":
		key := c.keyPath("audit-signing.key")
		if err := audit.EnsureDevSignerKey(key, audit.DefaultSignerName); err != nil {
			return nil, fmt.Errorf("audit signing key: %w", err)
		}
		args = append(args, "--audit-signing-key-file", key, "--audit-witness-file", c.cfg.DataDir+"-witness.jsonl")
	}
	return append(args, c.tlsArgs(name, "")...), nil
}

func (c *Cluster) startService(svc, name string, authArgs []string) error {
	args, err := c.serviceArgs(svc, name)
	if err != nil {
		return err
	}
	args = append(args, c.cfg.ServiceArgs...)
	return c.start(name, svc, append(args, authArgs...)...)
}

// createDatabases creates DBPrefix_<service> for each service that is not
// there yet.
func (c *Cluster) createDatabases(ctx context.Context) error {
	db, err := sql.Open("pgx", c.cfg.PGURL)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("PostgreSQL at %s: %w", redact(c.cfg.PGURL), err)
	}
	u, _ := url.Parse(c.cfg.PGURL)
	for _, svc := range Services {
		name := c.cfg.DBPrefix + "_" + svc
		var exists bool
		if err := db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			// The name is checked by Validate (letters, digits, _).
			if _, err := db.ExecContext(ctx, `CREATE DATABASE `+name); err != nil {
				return fmt.Errorf("create database %s: %w", name, err)
			}
		}
		d := *u
		d.Path = "/" + name
		// Every process shares one server: keep them under its
		// max_connections together (100 by default).
		q := d.Query()
		q.Set("pool_max_conns", strconv.Itoa(c.cfg.DBConns))
		d.RawQuery = q.Encode()
		c.DatabaseDSN[svc] = d.String()
	}
	return nil
}

// migrate runs `<service> migrate` for every service, one after the other,
// and fails with the command's output when one fails.
func (c *Cluster) migrate(ctx context.Context) error {
	for _, svc := range Services {
		cmd := exec.CommandContext(ctx, filepath.Join(c.cfg.BinDir, svc), "migrate", "--database-dsn", c.DatabaseDSN[svc])
		cmd.Env = childEnv()
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s migrate: %w\n%s", svc, err, out)
		}
		if f, err := os.OpenFile(filepath.Join(c.logDir, svc+"-migrate.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
			_, _ = f.Write(out)
			_ = f.Close()
		}
	}
	return nil
}

// DropDatabases removes the cluster's databases (after Stop; for tests).
func DropDatabases(ctx context.Context, pgURL, prefix string) error {
	if !dbPrefix.MatchString(prefix) {
		return fmt.Errorf("bad prefix %q", prefix)
	}
	db, err := sql.Open("pgx", pgURL)
	if err != nil {
		return err
	}
	defer db.Close()
	var errs []error
	for _, svc := range Services {
		if _, err := db.ExecContext(ctx, `DROP DATABASE IF EXISTS `+prefix+"_"+svc+` WITH (FORCE)`); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// start launches one process, its output appended to logs/<name>.log.
func (c *Cluster) start(name, bin string, args ...string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return errors.New("cluster stopped")
	}
	logFile, err := os.OpenFile(filepath.Join(c.logDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	p := &proc{name: name, bin: bin, args: args, done: make(chan struct{})}
	p.cmd = exec.Command(filepath.Join(c.cfg.BinDir, bin), args...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.Env = append(childEnv(), c.cfg.Env...)
	if _, set := os.LookupEnv("GOMAXPROCS"); !set && !c.cfg.AllCPUs && !slices.ContainsFunc(c.cfg.Env, func(kv string) bool { return strings.HasPrefix(kv, "GOMAXPROCS=") }) {
		p.cmd.Env = append(p.cmd.Env, "GOMAXPROCS="+strconv.Itoa(min(CPULimit(bin), runtime.NumCPU())))
	}
	if _, set := os.LookupEnv("GOGC"); !set && c.cfg.GOGC > 0 && !slices.ContainsFunc(c.cfg.Env, func(kv string) bool { return strings.HasPrefix(kv, "GOGC=") }) {
		p.cmd.Env = append(p.cmd.Env, "GOGC="+strconv.Itoa(c.cfg.GOGC))
	}
	if !c.cfg.SysmonDeepSleep {
		p.cmd.Env = godebug.With(p.cmd.Env, SysmonGODEBUG)
	}
	p.cmd.SysProcAttr = sysProcAttr()
	if err := startCmd(p.cmd); err != nil {
		_ = logFile.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	if _, ok := c.procs[name]; !ok {
		c.order = append(c.order, name)
	}
	c.procs[name] = p
	go func() {
		p.err = p.cmd.Wait()
		_ = logFile.Close()
		close(p.done)
		c.mu.Lock()
		defer c.mu.Unlock()
		if !p.expected && !c.stopped {
			logPath := filepath.Join(c.logDir, name+".log")
			c.fail(fmt.Errorf("%s exited: %v (see %s); its last lines:\n%s", name, p.err, logPath, tail(logPath, 3)))
		}
	}()
	return nil
}

// tail is the last n lines of the file at path, at most 2 KiB: why a
// process exited, in the error itself (a test's excerpt in CI may not
// reach the dumped logs).
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	b = bytes.TrimRight(b[max(0, len(b)-2048):], "\n")
	lines := bytes.Split(b, []byte("\n"))
	return string(bytes.Join(lines[max(0, len(lines)-n):], []byte("\n")))
}

// fail records the first unexpected exit; c.mu is held.
func (c *Cluster) fail(err error) {
	c.once.Do(func() {
		c.failErr = err
		close(c.failed)
	})
}

// CPULimit is the CPU limit, in whole CPUs, of bin's container in deploy/k8s
// (TestCPULimitsMatchTheManifests keeps them equal): the gateway 2, every
// other process 1. In a pod Go sets GOMAXPROCS from it; the local cluster
// gives each process the same, so that six processes on a small machine
// run as they would in their pods, not each with a scheduler thread per
// CPU. On a 2-CPU machine the stack took ~0.7–1.6 ms less CPU per message
// and ~25% fewer system calls with it (BENCHMARKS.md, dsys13).
func CPULimit(bin string) int {
	if bin == "gateway" {
		return 2
	}
	return 1
}

// childEnv is the environment without CLINICCHAT_* settings, so that every
// process gets exactly the flags the cluster gives it.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CLINICCHAT_") {
			env = append(env, kv)
		}
	}
	return env
}

// PIDs are the running processes' ids by name (for measurements).
func (c *Cluster) PIDs() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for name, p := range c.procs {
		if p.cmd != nil && p.cmd.Process != nil {
			select {
			case <-p.done:
			default:
				out[name] = p.cmd.Process.Pid
			}
		}
	}
	return out
}

// Done is closed when a process exits without being asked to; Err says which.
func (c *Cluster) Done() <-chan struct{} { return c.failed }

// Err is why Done closed.
func (c *Cluster) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failErr
}

// Kill SIGKILLs one process (e.g. "delivery-1"), as a crash would.
func (c *Cluster) Kill(name string) error {
	c.mu.Lock()
	p, ok := c.procs[name]
	if ok {
		p.expected = true
	}
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("no process %s", name)
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	return nil
}

// Restart stops one service process (SIGTERM, drained) and starts it again
// with its flags plus extra (later flags win), then waits until the gateway
// is ready again.
func (c *Cluster) Restart(ctx context.Context, name string, extra ...string) error {
	c.mu.Lock()
	p, ok := c.procs[name]
	if ok {
		p.expected = true
	}
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("no process %s", name)
	}
	terminate(p, 10*time.Second)
	if err := c.start(name, p.bin, append(slices.Clone(p.args), extra...)...); err != nil {
		return err
	}
	return c.waitReady(ctx)
}

// Stop stops every process: the gateway first, then the services, the demo
// provider and NATS last; each gets SIGTERM and a few seconds to drain, then
// its whole process group is killed.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	var gateway, services, last []*proc
	for _, name := range c.order {
		p := c.procs[name]
		p.expected = true
		switch {
		case name == "gateway" || strings.HasPrefix(name, "gateway-"):
			gateway = append(gateway, p)
		case name == "demoprovider" || name == "nats":
			last = append(last, p)
		default:
			services = append(services, p)
		}
	}
	c.mu.Unlock()
	for _, group := range [][]*proc{gateway, services, last} {
		var wg sync.WaitGroup
		for _, p := range group {
			wg.Add(1)
			go func() { defer wg.Done(); terminate(p, 10*time.Second) }()
		}
		wg.Wait()
	}
	return nil
}

// terminate sends SIGTERM, waits up to grace, then kills the process group.
func terminate(p *proc, grace time.Duration) {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
		}
	}
	// Anything left in its group (it has none of its own, but be sure).
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// waitReady polls every gateway's /readyz (NATS and every upstream serving).
func (c *Cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	addrs := c.GatewayHTTPAddrs
	if len(addrs) == 0 {
		addrs = []string{c.HTTPAddr}
	}
	for i := 0; i < len(addrs); {
		resp, err := client.Get("http://" + addrs[i] + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				i++ // this gateway is ready; the next one
				continue
			}
			err = fmt.Errorf("%s/readyz: %s", addrs[i], resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("the cluster did not become ready: %v (logs in %s)", last, c.logDir)
		case <-c.failed:
			return c.Err()
		case <-tick.C:
		}
	}
	return nil
}

func (c *Cluster) waitTCP(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return conn.Close()
		}
		select {
		case <-ctx.Done():
			return err
		case <-c.failed:
			return c.Err()
		case <-tick.C:
		}
	}
}

// seed fills the demo practice through the preferences service (once).
func (c *Cluster) seed(ctx context.Context) (bool, error) {
	opts, err := c.tls["localcluster"].DialOptions()
	if err != nil {
		return false, err
	}
	cc, err := grpcx.Dial(c.Addrs["preferences"], opts...)
	if err != nil {
		return false, err
	}
	defer func() { _ = cc.Close() }()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return demoprovider.Seed(ctx, cc, c.DevIssuer)
}

// freeAddr returns addr, with a free port in place of port 0 that no other
// process of the cluster has been given.
func (c *Cluster) freeAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if _, err := strconv.Atoi(port); err != nil {
		return "", fmt.Errorf("port %q", port)
	}
	if port != "0" {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return "", err // in use (by another cluster or all-in-one?)
		}
		defer lis.Close()
		c.ports[lis.Addr().String()] = true
		return lis.Addr().String(), nil
	}
	// The port is released before its process binds it. A port the kernel
	// picks (the ephemeral range, 32768+) is the next one it gives an
	// outgoing connection, which then takes it first; a random one below
	// that range is taken only by another bind — or by another of our
	// processes, had it been handed out twice.
	for range 100 {
		try := net.JoinHostPort(host, strconv.Itoa(20000+mrand.IntN(12000)))
		if c.ports[try] {
			continue
		}
		lis, err := net.Listen("tcp", try)
		if err == nil {
			defer lis.Close()
			c.ports[try] = true
			return try, nil
		}
	}
	return "", fmt.Errorf("no free port on %s after 100 tries", host)
}

func redact(dsn string) string {
	if u, err := url.Parse(dsn); err == nil {
		return u.Redacted()
	}
	return "(url)"
}

// Summary lists each process and its address, for the start-up message.
func (c *Cluster) Summary() string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(c.Addrs)) {
		if name != "delivery" { // listed as delivery-1, …
			parts = append(parts, name+"="+c.Addrs[name])
		}
	}
	parts = append(parts, "nats="+c.NATSURL)
	for _, name := range slices.Sorted(maps.Keys(c.MetricsAddrs)) {
		parts = append(parts, name+"-metrics="+c.MetricsAddrs[name])
	}
	for _, name := range slices.Sorted(maps.Keys(c.DebugAddrs)) {
		parts = append(parts, name+"-debug="+c.DebugAddrs[name])
	}
	return strings.Join(parts, " ")
}
