package standalone_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/clinicchat/clinicchat/services/attachment"
	"github.com/clinicchat/clinicchat/services/audit"
	"github.com/clinicchat/clinicchat/services/conversation"
	"github.com/clinicchat/clinicchat/services/delivery"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
	"github.com/clinicchat/clinicchat/services/preferences"
)

// idleWindow is how long the stack is left alone while commits and CPU are
// counted.
const idleWindow = 4 * time.Second

// maxIdleCommits is the most transactions per second a service's database
// may see while the stack is idle.
const maxIdleCommits = 10.0

// An idle stack on PostgreSQL does (almost) nothing: each service's database
// sees at most a few commits per second (its outbox relay's bounded poll) and
// the process — five services and the NATS server — uses a sliver of a core.
// Before the fix the outbox relay spun on its own empty commits: thousands of
// commits per second per service and a whole core.
func TestIdleStackOnPostgresDoesNotSpin(t *testing.T) {
	admin := adminDB(t)
	names := []string{"preferences", "conversation", "delivery", "attachment", "audit"}
	dsn := map[string]string{}
	for _, n := range names {
		dsn[n] = createDatabase(t, admin, n)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, js := testkit.NATS(t)
	log := testkit.Logger(t)
	_, verifier := testkit.NewTokens()

	// One gRPC server per service on loopback, as the binaries serve them.
	type served struct {
		srv  *grpcx.Server
		lis  net.Listener
		conn *grpc.ClientConn
	}
	servers := map[string]*served{}
	for _, n := range names {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		conn, err := grpcx.Dial(lis.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close() })
		servers[n] = &served{srv: grpcx.NewServer(log, verifier), lis: lis, conn: conn}
	}

	type service interface {
		Register(grpc.ServiceRegistrar)
		Run(context.Context) error
		Close() error
	}
	var svcs []service
	build := func(name string, s service, err error) {
		t.Helper()
		require.NoError(t, err, name)
		s.Register(servers[name].srv.Server)
		svcs = append(svcs, s)
	}
	p, err := preferences.New(ctx, preferences.Config{DatabaseDSN: dsn["preferences"]}, preferences.Deps{Log: log, JS: js})
	build("preferences", p, err)
	c, err := conversation.New(ctx, conversation.Config{DatabaseDSN: dsn["conversation"], ArchiveAfter: time.Hour,
		ArchiveSweepInterval: time.Hour}, conversation.Deps{Log: log, JS: js, Preferences: servers["preferences"].conn})
	build("conversation", c, err)
	d, err := delivery.New(ctx, delivery.Config{DatabaseDSN: dsn["delivery"], StepUpWindow: 5 * time.Minute},
		delivery.Deps{Log: log, JS: js, Conversations: servers["conversation"].conn,
			Preferences: servers["preferences"].conn, Attachments: servers["attachment"].conn})
	build("delivery", d, err)
	kek := filepath.Join(t.TempDir(), "attachment.kek")
	_, err = attachment.EnsureDevKEK(kek)
	require.NoError(t, err)
	a, err := attachment.New(ctx, attachment.Config{DatabaseDSN: dsn["attachment"], BlobDir: t.TempDir(),
		StepUpWindow: 5 * time.Minute, Encryption: attachment.Encryption{KEKFile: kek}}, attachment.Deps{Log: log, JS: js, Conversations: servers["conversation"].conn})
	build("attachment", a, err)
	key := filepath.Join(t.TempDir(), "audit.key")
	require.NoError(t, audit.EnsureDevSignerKey(key, ""))
	au, err := audit.New(ctx, audit.Config{DatabaseDSN: dsn["audit"], SignerKeyFile: key}, audit.Deps{Log: log, JS: js})
	build("audit", au, err)

	g, gctx := errgroup.WithContext(ctx)
	for _, n := range names {
		s := servers[n]
		g.Go(func() error { return s.srv.Serve(s.lis) })
	}
	for _, s := range svcs {
		g.Go(func() error { return s.Run(gctx) })
	}
	defer func() {
		cancel()
		for _, n := range names {
			servers[n].srv.Shutdown(time.Second)
		}
		_ = g.Wait()
		for _, s := range svcs {
			_ = s.Close()
		}
	}()

	// Let every service finish starting (consumers created, first relay
	// rounds done): wait until the audit consumers exist.
	require.Eventually(t, func() bool {
		st, err := js.Stream(ctx, "CLINICCHAT_DELIVERY")
		if err != nil {
			return false
		}
		info, err := st.Info(ctx)
		return err == nil && info.State.Consumers >= 3 // conversation projection, attachment links, audit
	}, 20*time.Second, 20*time.Millisecond)

	before := commits(t, admin, dsn)
	cpu0 := cpuTime(t)
	start := time.Now()
	<-time.After(idleWindow) // the measurement window itself, not a wait for an event
	cpu := cpuTime(t) - cpu0
	elapsed := time.Since(start)
	after := commits(t, admin, dsn)

	cpuShare := cpu.Seconds() / elapsed.Seconds()
	t.Logf("idle %.1fs: process CPU %v (%.2f%% of a core)", elapsed.Seconds(), cpu.Round(time.Millisecond), 100*cpuShare)
	rates := map[string]float64{}
	for _, n := range names {
		rates[n] = float64(after[n]-before[n]) / elapsed.Seconds()
		t.Logf("idle %s: %.1f commits/s", n, rates[n])
	}
	// A few per second is bounded polling (1.5–4.7 per service on main, Dec 1).
	// With log_statement=all on these databases, an idle window held only each
	// relay's probe (`SELECT 1 FROM outbox LIMIT 1`, once per Poll) and pgx's
	// `-- ping` of a pooled connection reused after a pause: one each per
	// second; the rest was the start's migrations spilling into the window.
	// The spin this guards against was hundreds to tens of thousands. 10 leaves
	// room for that spill (conversation once measured 5.5 in CI).
	for _, n := range names {
		require.LessOrEqual(t, rates[n], maxIdleCommits, "%s commits %.1f transactions per second while idle", n, rates[n])
	}
	require.LessOrEqual(t, cpuShare, 0.05, "an idle stack used %.1f%% of a core", 100*cpuShare)
}

// adminDB connects to the test server's maintenance database or skips (fails
// under CI=true) as testkit does.
func adminDB(t *testing.T) *sql.DB {
	t.Helper()
	testkit.PostgresSchema(t) // skips or fails as testkit decides when PostgreSQL is down
	db, err := sql.Open("pgx", testkit.PostgresDSN())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// createDatabase creates a database of its own for one service (so its
// pg_stat_database row counts only that service's commits) and drops it
// after the test.
func createDatabase(t *testing.T, admin *sql.DB, service string) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := fmt.Sprintf("idle_%x_%s", b, service)
	_, err := admin.Exec(`CREATE DATABASE ` + name)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = admin.Exec(`DROP DATABASE IF EXISTS ` + name + ` WITH (FORCE)`) })
	u, err := url.Parse(testkit.PostgresDSN())
	require.NoError(t, err)
	u.Path = "/" + name
	return u.String()
}

// commits reads pg_stat_database.xact_commit of each service's database. The
// statistics are flushed by each backend at most once a second and read from
// a snapshot, so clear the snapshot first.
func commits(t *testing.T, admin *sql.DB, dsn map[string]string) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	conn, err := admin.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.ExecContext(ctx, `SELECT pg_stat_clear_snapshot()`)
	require.NoError(t, err)
	out := map[string]int64{}
	for n, d := range dsn {
		u, err := url.Parse(d)
		require.NoError(t, err)
		var x int64
		require.NoError(t, conn.QueryRowContext(ctx, `SELECT xact_commit FROM pg_stat_database WHERE datname = $1`, u.Path[1:]).Scan(&x))
		out[n] = x
	}
	return out
}

func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	require.NoError(t, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
