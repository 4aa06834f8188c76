package rig

import (
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/localcluster"
	"github.com/clinicchat/clinicchat/services/attachment"
	"github.com/clinicchat/clinicchat/services/audit"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// Ports every service listens on at its host's address.
var servicePorts = map[string]int{"preferences": 9101, "conversation": 9102, "delivery": 9103, "attachment": 9104,
	"audit": 9105, "demoprovider": 9106}

// rig is the running multi-host stack.
type rig struct {
	t   *testing.T
	dir string
	bin string
	nw  *network
	ps  *procs
	pki *pki

	natsHosts []*host
	nats      []*proc
	natsURLs  string
	passwords map[string]string

	pgHost *host
	pg     *proc
	pgURL  string

	svcHosts []*host
	// svc is each service process by "<service>@<host>".
	svc map[string]*proc
	gw  []*proc
	// gwURLs are the gateways' HTTP base URLs.
	gwURLs []string
}

func (r *rig) path(name string) string { return filepath.Join(r.dir, name) }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// startRig builds the hosts and starts everything on them.
func startRig(t *testing.T, ctx context.Context) *rig {
	dir, err := os.MkdirTemp("", "clinicchat-rig-")
	must(t, err)
	must(t, os.Chmod(dir, 0o755)) // PostgreSQL runs as postgres and needs to reach its data dir
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kept the rig's logs and data in %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	r := &rig{t: t, dir: dir, bin: filepath.Join(dir, "bin"), svc: map[string]*proc{}, passwords: map[string]string{}}
	must(t, os.MkdirAll(r.path("logs"), 0o755))

	built := make(chan error, 1)
	go func() { built <- localcluster.Build(ctx, r.bin) }()

	r.nw = newNetwork(t)
	r.ps = newProcs(t, r.path("logs"))
	for i := range 3 {
		r.natsHosts = append(r.natsHosts, r.nw.addHost(t, fmt.Sprintf("n%d", i+1), 11+i))
	}
	r.pgHost = r.nw.addHost(t, "pg", 20)
	for i := range 2 {
		r.svcHosts = append(r.svcHosts, r.nw.addHost(t, fmt.Sprintf("s%d", i+1), 21+i))
	}
	gwHosts := []*host{r.nw.addHost(t, "g1", 31), r.nw.addHost(t, "g2", 32)}

	r.pki, err = newPKI(dir)
	must(t, err)
	for _, p := range natsx.Processes {
		r.passwords[p] = rand.Text()
	}
	must(t, r.initPostgres(ctx))
	t.Log("building the binaries")
	must(t, <-built)
	must(t, r.startNATS(ctx))
	must(t, r.declareStreams(ctx))
	must(t, r.createDatabases(ctx))
	must(t, r.startServices(ctx))
	for i, h := range gwHosts {
		r.gw = append(r.gw, r.startGateway(h, i))
		r.gwURLs = append(r.gwURLs, "http://"+h.ip+":8080")
	}
	for i, u := range r.gwURLs {
		must(t, waitReady(ctx, u, r.gw[i]))
	}
	return r
}

// initPostgres makes a PostgreSQL instance of the rig's own, as the
// postgres user, and starts it on its host.
func (r *rig) initPostgres(ctx context.Context) error {
	data := r.path("pg")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "chown", "postgres:postgres", data).CombinedOutput(); err != nil {
		return fmt.Errorf("chown: %v: %s", err, out)
	}
	out, err := exec.CommandContext(ctx, "runuser", "-u", "postgres", "--", "initdb", "-D", data, "--auth=trust",
		"-U", "postgres", "--no-sync", "-E", "UTF8").CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %v: %s", err, out)
	}
	hba, err := os.OpenFile(filepath.Join(data, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(hba, "host all all %s.0/24 trust\n", r.nw.subnet) // the rig's hosts only
	if cerr := hba.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	r.pgURL = "postgres://postgres@" + r.pgHost.ip + ":5432/postgres?sslmode=disable"
	return r.startPostgres(ctx)
}

func (r *rig) startPostgres(ctx context.Context) error {
	if r.pg == nil {
		// setpriv execs postgres itself (signals reach the postmaster).
		// fsync is off: the rig stops PostgreSQL cleanly, never its host.
		r.pg = r.ps.add("postgres", r.pgHost, nil, "setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--",
			"postgres", "-D", r.path("pg"), "-c", "listen_addresses="+r.pgHost.ip, "-c", "port=5432",
			"-c", "unix_socket_directories="+r.path("pg"), "-c", "max_connections=500", "-c", "fsync=off",
			"-c", "shared_buffers=64MB")
	} else if err := r.pg.start(); err != nil {
		return err
	}
	return waitTCP(ctx, r.pgHost.ip+":5432", r.pg)
}

func (r *rig) createDatabases(ctx context.Context) error {
	db, err := sql.Open("pgx", r.pgURL)
	if err != nil {
		return err
	}
	defer db.Close()
	for _, svc := range localcluster.Services {
		if _, err := db.ExecContext(ctx, "CREATE DATABASE rig_"+svc); err != nil {
			return err
		}
	}
	return nil
}

func (r *rig) dsn(svc string) string {
	return "postgres://postgres@" + r.pgHost.ip + ":5432/rig_" + svc + "?sslmode=disable"
}

// startNATS starts the three servers of one JetStream cluster, with TLS
// for clients and routes and a user per process (natsx.AuthorizationConf).
func (r *rig) startNATS(ctx context.Context) error {
	var ips, urls, routes []string
	for _, h := range r.natsHosts {
		ips = append(ips, h.ip)
		urls = append(urls, "nats://"+h.ip+":4222")
		routes = append(routes, fmt.Sprintf("%q", "nats://"+h.ip+":6222"))
	}
	r.natsURLs = strings.Join(urls, ",")
	cert, key, err := r.pki.issue("nats", ips...)
	if err != nil {
		return err
	}
	authz, err := natsx.AuthorizationConf(r.passwords)
	if err != nil {
		return err
	}
	tls := fmt.Sprintf("tls { cert_file: %q, key_file: %q, ca_file: %q, timeout: 5 }", cert, key, r.pki.CAFile)
	for i, h := range r.natsHosts {
		name := fmt.Sprintf("n%d", i+1)
		conf := fmt.Sprintf(`server_name: %s
host: %s
port: 4222
http: "%s:8222"
jetstream { store_dir: %q, max_file_store: 64G, max_memory_store: 256M }
%s
cluster {
  name: rig
  host: %s
  port: 6222
  routes: [%s]
  connect_retries: 120
  %s
}
%s`, name, h.ip, h.ip, r.path("nats-"+name), tls, h.ip, strings.Join(routes, ", "), tls, authz)
		file := r.path(name + ".conf")
		if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
			return err
		}
		r.nats = append(r.nats, r.ps.add("nats-"+name, h, nil, filepath.Join(r.bin, "nats-server"), "-c", file))
	}
	for i, h := range r.natsHosts {
		if err := waitNATS(ctx, h, r.nats[i]); err != nil {
			return err
		}
	}
	return nil
}

// waitNATS waits until the server on h reports healthy on its monitoring
// port: JetStream up, with a meta leader in the cluster.
func waitNATS(ctx context.Context, h *host, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	c := &http.Client{Timeout: 2 * time.Second}
	var last string
	for {
		resp, err := c.Get("http://" + h.ip + ":8222/healthz")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, body)
		} else {
			last = err.Error()
		}
		if ok, perr := p.exited(); ok {
			return fmt.Errorf("%s exited: %v (log %s)", p.name, perr, p.log)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy: %s (log %s)", p.name, last, p.log)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// declareStreams creates the R3 streams before the services start (as an
// operator's first deploy would have): five services declaring them at
// once on a busy machine can outlast JetStream's API timeout.
func (r *rig) declareStreams(ctx context.Context) error {
	nc, js, err := r.natsAs("delivery")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := natsx.CheckServer(ctx, nc, js); err != nil {
		return err
	}
	for {
		err := natsx.EnsureStreams(ctx, js, natsx.StreamsConfig{Replicas: 3})
		if err == nil || ctx.Err() != nil {
			return err
		}
		r.t.Logf("declaring the streams: %v; again", err)
	}
}

// natsArgs are the NATS flags of process (its own user; the password comes
// from the environment, as in the manifests).
func (r *rig) natsArgs(process string) ([]string, []string) {
	return []string{"--nats-url", r.natsURLs, "--nats-tls-ca", r.pki.CAFile, "--nats-user", process},
		[]string{"CLINICCHAT_NATS_PASSWORD=" + r.passwords[process]}
}

// peers is a service's address on every service host.
func (r *rig) peers(svc string) string {
	var out []string
	for _, h := range r.svcHosts {
		out = append(out, fmt.Sprintf("%s:%d", h.ip, servicePorts[svc]))
	}
	return strings.Join(out, ",")
}

// startServices starts one replica of every service (and a demo provider)
// on each service host; the first host's replicas apply the migrations
// before the second's start.
func (r *rig) startServices(ctx context.Context) error {
	devKey := r.path("dev-signing.key")
	if err := os.WriteFile(devKey, []byte(rand.Text()+rand.Text()), 0o600); err != nil {
		return err
	}
	kek := r.path("attachment.kek")
	if _, err := attachment.EnsureDevKEK(kek); err != nil {
		return err
	}
	auditKey := r.path("audit-signing.key")
	if err := audit.EnsureDevSignerKey(auditKey, audit.DefaultSignerName); err != nil {
		return err
	}
	token := r.path("provider.token")
	if err := os.WriteFile(token, []byte(rand.Text()), 0o600); err != nil {
		return err
	}
	if err := os.MkdirAll(r.path("blobs"), 0o700); err != nil { // the replicas' shared volume
		return err
	}
	for i, h := range r.svcHosts {
		provCert, provKey, err := r.pki.issue("provider-"+h.name, h.ip)
		if err != nil {
			return err
		}
		name := "demoprovider@" + h.name
		r.svc[name] = r.ps.add(name, h, nil, filepath.Join(r.bin, "demoprovider"),
			"--grpc-addr", fmt.Sprintf("%s:%d", h.ip, servicePorts["demoprovider"]), "--service-token-file", token,
			"--tls-cert-file", provCert, "--tls-key-file", provKey, "--drain-timeout", "5s")
		for _, svc := range localcluster.Services {
			args := []string{"--grpc-addr", fmt.Sprintf("%s:%d", h.ip, servicePorts[svc]), "--database-dsn", r.dsn(svc),
				"--log-level", "info", "--drain-timeout", "5s", "--nats-replicas", "3", "--dev-signing-key-file", devKey,
				"--limit-sends-per-second", "1e9", "--limit-send-burst", "1000000000"}
			nargs, env := r.natsArgs(svc)
			args = append(args, nargs...)
			switch svc {
			case "conversation":
				args = append(args, "--preferences-addr", r.peers("preferences"))
			case "delivery":
				args = append(args, "--conversation-addr", r.peers("conversation"), "--preferences-addr", r.peers("preferences"),
					"--attachment-addr", r.peers("attachment"),
					"--artifact-provider-addr", fmt.Sprintf("%s:%d", h.ip, servicePorts["demoprovider"]),
					"--artifact-provider-ca-file", r.pki.CAFile, "--artifact-provider-token-file", token)
			case "attachment":
				args = append(args, "--conversation-addr", r.peers("conversation"), "--blob-dir", r.path("blobs"),
					"--attachment-kek-file", kek)
			case "audit":
				args = append(args, "--audit-signing-key-file", auditKey, "--audit-witness-file", r.path("witness-"+h.name+".jsonl"))
			}
			name := svc + "@" + h.name
			r.svc[name] = r.ps.add(name, h, env, append([]string{filepath.Join(r.bin, svc)}, args...)...)
		}
		if i == 0 {
			for _, svc := range localcluster.Services {
				if err := waitTCP(ctx, fmt.Sprintf("%s:%d", h.ip, servicePorts[svc]), r.svc[svc+"@"+h.name]); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (r *rig) startGateway(h *host, i int) *proc {
	args := []string{"--http-addr", h.ip + ":8080", "--grpc-addr", h.ip + ":9090", "--log-level", "info",
		"--drain-timeout", "5s", "--dev", "--dev-signing-key-file", r.path("dev-signing.key"), "--sse-keepalive", "1s"}
	for _, svc := range localcluster.Services {
		args = append(args, "--"+svc+"-addr", r.peers(svc))
	}
	nargs, env := r.natsArgs("gateway")
	return r.ps.add(fmt.Sprintf("gateway@g%d", i+1), h, env, append([]string{filepath.Join(r.bin, "gateway")}, append(args, nargs...)...)...)
}

// natsAs connects from the test (root namespace) as process's NATS user.
func (r *rig) natsAs(process string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := natsx.Connect(natsx.Config{URL: r.natsURLs, TLSCA: r.pki.CAFile, User: process, Password: r.passwords[process],
		Name: "rig-" + process})
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// restart stops p with sig (SIGKILL: a crash) and starts it again.
func restart(ctx context.Context, p *proc, sig syscall.Signal, addr string) error {
	p.stop(sig, 15*time.Second)
	if err := p.start(); err != nil {
		return err
	}
	return waitTCP(ctx, addr, p)
}
