package outbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natstest "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

const schema = `CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,
	subject TEXT NOT NULL, payload BLOB NOT NULL, created_at BIGINT NOT NULL, traceparent TEXT)`

const pgSchema = `CREATE TABLE outbox (seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE,
	subject TEXT NOT NULL, payload BYTEA NOT NULL, created_at BIGINT NOT NULL, traceparent TEXT)`

func runNATS(port int, dir string) *server.Server {
	opts := natstest.DefaultTestOptions
	opts.Port = port
	opts.JetStream = true
	opts.StoreDir = dir
	return natstest.RunServer(&opts)
}

func add(t *testing.T, db *sqldb.DB, i int) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
		id := fmt.Sprintf("ev-%04d", i)
		return outbox.Add(ctx, tx, id, natsx.SubjectDeliveryAccess, &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p"}})
	}))
}

// With NATS down, writes still commit and their events wait in the outbox;
// when NATS returns, each event is published exactly once, in order.
func TestRelayPublishesEachEventOnceAcrossANATSOutage(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			dir := t.TempDir()
			ns := runNATS(-1, dir)
			port := ns.Addr().(*net.TCPAddr).Port
			addr := ns.ClientURL()
			nc, err := nats.Connect(addr, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
			require.NoError(t, err)
			defer nc.Close()
			js, err := jetstream.New(nc)
			require.NoError(t, err)
			require.NoError(t, natsx.EnsureStreams(ctx, js, natsx.StreamsConfig{}))

			db := openOutboxDB(t, b)

			relay := outbox.NewRelay(db, js, testkit.Logger(t))
			relay.Poll = 20 * time.Millisecond
			done := make(chan error, 1)
			go func() { done <- relay.Run(ctx) }()

			for i := range 10 {
				add(t, db, i)
			}
			stream, err := js.Stream(ctx, natsx.StreamDelivery)
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				info, err := stream.Info(ctx)
				return err == nil && info.State.Msgs == 10
			}, 10*time.Second, 10*time.Millisecond)

			// NATS goes away; sends keep committing.
			ns.Shutdown()
			ns.WaitForShutdown()
			for i := 10; i < 60; i++ {
				add(t, db, i)
			}
			var pending int
			require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&pending))
			require.Positive(t, pending, "events wait in the outbox while NATS is down")

			// NATS returns on the same port and store.
			ns2 := runNATS(port, dir)
			defer ns2.Shutdown()

			require.Eventually(t, func() bool {
				var n int
				return db.QueryRow(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&n) == nil && n == 0
			}, 30*time.Second, 20*time.Millisecond)
			stream, err = js.Stream(ctx, natsx.StreamDelivery)
			require.NoError(t, err)
			info, err := stream.Info(ctx)
			require.NoError(t, err)
			require.EqualValues(t, 60, info.State.Msgs, "each event exactly once")

			cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
			require.NoError(t, err)
			batch, err := cons.FetchNoWait(100)
			require.NoError(t, err)
			seen := map[string]bool{}
			for m := range batch.Messages() {
				var e typev1.AccessRecorded
				require.NoError(t, proto.Unmarshal(m.Data(), &e))
				require.False(t, seen[e.GetMeta().GetId()], "duplicate %s", e.GetMeta().GetId())
				seen[e.GetMeta().GetId()] = true
			}
			require.Len(t, seen, 60)
			cancel()
			require.NoError(t, <-done)
		})
	}
}

// read returns the AccessRecorded events of the delivery stream in stream order.
func read(t *testing.T, ctx context.Context, js jetstream.JetStream, want int) []*typev1.AccessRecorded {
	t.Helper()
	stream, err := js.Stream(ctx, natsx.StreamDelivery)
	require.NoError(t, err)
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	var out []*typev1.AccessRecorded
	for len(out) < want {
		batch, err := cons.Fetch(want-len(out), jetstream.FetchMaxWait(5*time.Second))
		require.NoError(t, err)
		got := 0
		for m := range batch.Messages() {
			var e typev1.AccessRecorded
			require.NoError(t, proto.Unmarshal(m.Data(), &e))
			out = append(out, &e)
			got++
		}
		require.NoError(t, batch.Error())
		require.Positive(t, got, "no more events after %d of %d", len(out), want)
	}
	return out
}

func streamMsgs(t *testing.T, ctx context.Context, js jetstream.JetStream) uint64 {
	t.Helper()
	stream, err := js.Stream(ctx, natsx.StreamDelivery)
	require.NoError(t, err)
	info, err := stream.Info(ctx)
	require.NoError(t, err)
	return info.State.Msgs
}

func addFor(t *testing.T, db *sqldb.DB, conv string, i int) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
		id := fmt.Sprintf("ev-%s-%04d", conv, i)
		return outbox.Add(ctx, tx, id, natsx.SubjectDeliveryAccess,
			&typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p", Resource: conv, Detail: fmt.Sprint(i)}})
	}))
}

func openPostgresTwice(t *testing.T) (*sqldb.DB, *sqldb.DB) {
	t.Helper()
	dsn := testkit.PostgresSchema(t)
	var dbs [2]*sqldb.DB
	for i := range dbs {
		db, err := sqldb.Open(context.Background(), dsn)
		require.NoError(t, err)
		t.Cleanup(func() { _ = db.Close() })
		dbs[i] = db
	}
	_, err := dbs[0].Exec(context.Background(), pgSchema)
	require.NoError(t, err)
	return dbs[0], dbs[1]
}

// Two replicas write and relay one PostgreSQL outbox at once: every event is
// published exactly once, and each conversation's events in the order they
// were written.
func TestTwoPostgresRelaysPublishOnceInOrderPerConversation(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, js := testkit.NATS(t)
	dbA, dbB := openPostgresTwice(t)
	var runs errgroup.Group
	for _, db := range []*sqldb.DB{dbA, dbB} {
		r := outbox.NewRelay(db, js, testkit.Logger(t))
		r.Batch = 16 // many rounds, so the replicas take turns
		runs.Go(func() error { return r.Run(ctx) })
	}

	const convs, per = 6, 60
	var writers errgroup.Group
	for c := range convs {
		conv := fmt.Sprintf("c%d", c)
		writers.Go(func() error {
			for i := range per {
				// A conversation's writes alternate between the replicas.
				db := dbA
				if (i+c)%2 == 1 {
					db = dbB
				}
				addFor(t, db, conv, i)
			}
			return nil
		})
	}
	require.NoError(t, writers.Wait())

	events := read(t, ctx, js, convs*per)
	next := map[string]int{}
	for _, e := range events {
		conv := e.GetMeta().GetResource()
		require.Equal(t, fmt.Sprint(next[conv]), e.GetMeta().GetDetail(), "conversation %s out of order or duplicated", conv)
		next[conv]++
	}
	for c := range convs {
		require.Equal(t, per, next[fmt.Sprintf("c%d", c)])
	}
	require.Eventually(t, func() bool {
		var n int
		return dbA.QueryRow(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&n) == nil && n == 0
	}, 10*time.Second, 10*time.Millisecond, "published rows are deleted")
	require.EqualValues(t, convs*per, streamMsgs(t, ctx, js), "each event exactly once")
	cancel()
	require.NoError(t, runs.Wait())
}

// A relay that stops after claiming a batch (a frozen process) keeps the
// outbox only for its lease; then the other replica publishes the rows, and
// the frozen relay's late publish is dropped as a duplicate.
func TestFrozenPostgresRelayLosesTheOutboxAfterItsLease(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, js := testkit.NATS(t)
	dbA, dbB := openPostgresTwice(t)
	for i := range 20 {
		addFor(t, dbA, "c", i)
	}

	frozen := outbox.NewRelay(dbA, js, testkit.Logger(t))
	frozen.Lease = time.Second
	claimed, thaw := make(chan struct{}), make(chan struct{})
	outbox.SetAfterClaim(frozen, func(context.Context) {
		close(claimed)
		<-thaw
	})
	frozenDone := make(chan error, 1)
	go func() {
		_, err := frozen.Flush(ctx)
		frozenDone <- err
	}()
	<-claimed

	other := outbox.NewRelay(dbB, js, testkit.Logger(t))
	other.Poll = 50 * time.Millisecond
	runDone := make(chan error, 1)
	go func() { runDone <- other.Run(ctx) }()

	events := read(t, ctx, js, 20)
	for i, e := range events {
		require.Equal(t, fmt.Sprint(i), e.GetMeta().GetDetail())
	}
	require.Eventually(t, func() bool {
		var n int
		return dbB.QueryRow(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&n) == nil && n == 0
	}, 10*time.Second, 10*time.Millisecond)

	close(thaw) // the frozen relay wakes and publishes its stale batch
	<-frozenDone
	require.EqualValues(t, 20, streamMsgs(t, ctx, js), "the late publish was dropped as duplicates")
	cancel()
	require.NoError(t, <-runDone)
}

// A relay whose context ends between its claim and its publish releases the
// outbox at once, and the other replica publishes the rows.
func TestCancelledPostgresRelayHandsTheOutboxOver(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, js := testkit.NATS(t)
	dbA, dbB := openPostgresTwice(t)
	for i := range 20 {
		addFor(t, dbA, "c", i)
	}
	killedCtx, kill := context.WithCancel(ctx)
	killed := outbox.NewRelay(dbA, js, testkit.Logger(t))
	outbox.SetAfterClaim(killed, func(context.Context) { kill() })
	require.NoError(t, killed.Run(killedCtx))
	var left int
	require.NoError(t, dbA.QueryRow(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&left))
	require.Positive(t, left, "the killed relay deleted nothing it had not published")

	other := outbox.NewRelay(dbB, js, testkit.Logger(t))
	runDone := make(chan error, 1)
	go func() { runDone <- other.Run(ctx) }()
	require.Eventually(t, func() bool {
		var n int
		return dbB.QueryRow(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&n) == nil && n == 0
	}, 10*time.Second, 10*time.Millisecond)
	events := read(t, ctx, js, 20)
	for i, e := range events {
		require.Equal(t, fmt.Sprint(i), e.GetMeta().GetDetail())
	}
	require.EqualValues(t, 20, streamMsgs(t, ctx, js), "each event exactly once")
	cancel()
	require.NoError(t, <-runDone)
}

// A relay round that finds nothing commits nothing, and only commits that
// wrote outbox rows wake the relay.
func TestIdleRelayCommitsNothing(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			_, _, js := testkit.NATS(t)
			db := openOutboxDB(t, b)
			var commits atomic.Int64
			db.OnCommit(func() { commits.Add(1) })
			r := outbox.NewRelay(db, js, testkit.Logger(t))
			for range 20 {
				n, err := r.Flush(ctx)
				require.NoError(t, err)
				require.Zero(t, n)
			}
			require.Zero(t, commits.Load(), "an empty round commits nothing")

			// A commit without outbox rows does not wake the relay.
			_, err := db.Exec(ctx, `CREATE TABLE other (x INTEGER)`)
			require.NoError(t, err)
			select {
			case <-outbox.Kicked(r):
				t.Fatal("a commit without outbox rows woke the relay")
			default:
			}
			add(t, db, 1)
			select {
			case <-outbox.Kicked(r):
			default:
				t.Fatal("a commit with outbox rows did not wake the relay")
			}
		})
	}
}

// lockHeld reports whether some session holds db's outbox lock.
func lockHeld(t *testing.T, db *sqldb.DB) bool {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
		AND classid = 7342002 AND objid = hashtext(current_schema())::oid AND granted`).Scan(&n))
	return n > 0
}

func outboxRows(t *testing.T, db *sqldb.DB) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow(context.Background(), `SELECT count(*) FROM outbox`).Scan(&n))
	return n
}

// Events written together keep their order on the stream, also past the
// rows of one INSERT.
func TestAddAllKeepsOrder(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, _, js := testkit.NATS(t)
			db := openOutboxDB(t, b)
			const n = 40
			var evs []outbox.Event
			for i := range n {
				id := fmt.Sprintf("ev-%04d", i)
				evs = append(evs, outbox.Event{ID: id, Subject: natsx.Tenant(natsx.SubjectDeliveryAccess, "p", "c"),
					Msg: &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p", Detail: fmt.Sprint(i)}}})
			}
			require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, evs) }))
			require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, nil) }))
			relay := outbox.NewRelay(db, js, testkit.Logger(t))
			for left := n; left > 0; {
				k, err := relay.Flush(ctx)
				require.NoError(t, err)
				require.Positive(t, k)
				left -= k
			}
			for i, e := range read(t, ctx, js, n) {
				require.Equal(t, fmt.Sprint(i), e.GetMeta().GetDetail())
			}
			require.EqualValues(t, n, streamMsgs(t, ctx, js))
		})
	}
}

// While rows keep coming, a PostgreSQL relay keeps the outbox lock between
// rounds; its rounds publish the other replicas' rows too, in seq order,
// and when it stops it deletes what it published and releases the lock.
func TestPostgresRelayKeepsTheLockWhileBusy(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, js := testkit.NATS(t)
	dbA, dbB := openPostgresTwice(t)
	relay := outbox.NewRelay(dbA, js, testkit.Logger(t))
	relay.Linger = time.Hour // every wake-up finds the lock held
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()

	addFor(t, dbA, "c", 0)
	require.Equal(t, fmt.Sprint(0), read(t, ctx, js, 1)[0].GetMeta().GetDetail())
	require.True(t, lockHeld(t, dbB), "the relay keeps the lock after a round that published")
	addFor(t, dbB, "c", 1) // another replica's row: no wake-up of this relay
	addFor(t, dbA, "c", 2)
	for i, e := range read(t, ctx, js, 3) {
		require.Equal(t, fmt.Sprint(i), e.GetMeta().GetDetail())
	}
	require.True(t, lockHeld(t, dbB))
	// A consumer can read a row before the relay has its acknowledgement
	// (a fast batch's comes at the batch's end): a stop before it would
	// leave the row to be published again, as a duplicate, not deleted.
	require.Eventually(t, func() bool { n, _ := relay.Stats(); return n == 3 }, 10*time.Second, time.Millisecond,
		"the relay has the acknowledgements of the three rows")
	// and has ended that round: a stop during a round's statement breaks
	// the lock's session (the lock then goes when the server notices, and
	// the rows stay to be published again as duplicates), which is not
	// what this test is about (CI, Dec 2).
	require.Eventually(t, func() bool { return outbox.Lingering(relay) }, 10*time.Second, time.Millisecond,
		"the relay waits for a wake-up between rounds")

	cancel()
	require.NoError(t, <-done)
	require.False(t, lockHeld(t, dbB), "a relay that stops releases the lock")
	require.Zero(t, outboxRows(t, dbB), "and deletes what it published")
	require.EqualValues(t, 3, streamMsgs(t, context.Background(), js), "each event exactly once")
}

// While it keeps the lock, a woken PostgreSQL relay starts its next round
// no sooner than Pace after the last one read its batch: a row committed
// meanwhile waits (here for as long as the relay runs), and a stop ends
// the wait. A wake-up with no round within Pace, here the first, is not
// delayed, nor one after the relay released the lock.
func TestPostgresRelayPacesItsRoundsWhileBusy(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, js := testkit.NATS(t)
	dbA, dbB := openPostgresTwice(t)
	relay := outbox.NewRelay(dbA, js, testkit.Logger(t))
	relay.Linger, relay.Pace = time.Hour, time.Hour
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()

	addFor(t, dbA, "c", 0)
	require.Equal(t, "0", read(t, ctx, js, 1)[0].GetMeta().GetDetail(), "the first round goes at once")
	require.Eventually(t, func() bool { return outbox.Lingering(relay) }, 10*time.Second, time.Millisecond)
	addFor(t, dbA, "c", 1)
	require.Eventually(t, func() bool { return outbox.Pacing(relay) }, 10*time.Second, time.Millisecond,
		"woken within Pace of its last round, the relay waits")
	require.EqualValues(t, 1, streamMsgs(t, ctx, js), "the row committed meanwhile waits for the next round")

	cancel()
	require.NoError(t, <-done, "a stop ends the wait")
	require.False(t, lockHeld(t, dbB), "and releases the lock")
	require.Equal(t, 1, outboxRows(t, dbB), "the published row is deleted, the waiting one kept")

	// Another start publishes the waiting row in its first round; idle
	// then, it releases the lock, and a wake-up after that is not paced.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	relay = outbox.NewRelay(dbA, js, testkit.Logger(t))
	relay.Linger, relay.Pace = time.Millisecond, time.Hour
	go func() { done <- relay.Run(ctx) }()
	require.Equal(t, "1", read(t, ctx, js, 2)[1].GetMeta().GetDetail())
	require.Eventually(t, func() bool { return outboxRows(t, dbB) == 0 && !lockHeld(t, dbB) },
		10*time.Second, 5*time.Millisecond, "idle, it deletes what it published and releases the lock")
	addFor(t, dbA, "c", 2)
	require.Equal(t, "2", read(t, ctx, js, 3)[2].GetMeta().GetDetail(),
		"a wake-up after the relay released the lock is not paced")
	cancel()
	require.NoError(t, <-done)
	require.EqualValues(t, 3, streamMsgs(t, context.Background(), js), "each event exactly once")
}

// A relay that finds nothing more after its linger deletes what it
// published and releases the lock, and another replica then takes it.
func TestPostgresRelayReleasesTheLockWhenIdle(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, js := testkit.NATS(t)
	dbA, dbB := openPostgresTwice(t)
	var runs errgroup.Group
	for _, db := range []*sqldb.DB{dbA, dbB} {
		r := outbox.NewRelay(db, js, testkit.Logger(t))
		runs.Go(func() error { return r.Run(ctx) })
	}
	for i := range 5 {
		addFor(t, dbA, "c", i)
	}
	require.Eventually(t, func() bool { return outboxRows(t, dbA) == 0 && !lockHeld(t, dbA) },
		10*time.Second, 5*time.Millisecond, "rows deleted and the lock released")
	for i := 5; i < 10; i++ {
		addFor(t, dbB, "c", i)
	}
	for i, e := range read(t, ctx, js, 10) {
		require.Equal(t, fmt.Sprint(i), e.GetMeta().GetDetail())
	}
	require.Eventually(t, func() bool { return outboxRows(t, dbA) == 0 && !lockHeld(t, dbA) },
		10*time.Second, 5*time.Millisecond)
	require.EqualValues(t, 10, streamMsgs(t, ctx, js), "each event exactly once")
	cancel()
	require.NoError(t, runs.Wait())
}

// A relay that holds the lock longer than its lease without a round (a
// frozen process; here a linger above the lease) loses its session and the
// lock: the other replica publishes the rows, and the first one recovers
// on its next round. Nothing is lost, and duplicates are dropped.
func TestLingeringPostgresRelayLosesTheLockAfterItsLease(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, js := testkit.NATS(t)
	dbA, dbB := openPostgresTwice(t)
	frozen := outbox.NewRelay(dbA, js, testkit.Logger(t))
	frozen.Lease, frozen.Linger = time.Second, time.Hour
	var runs errgroup.Group
	runs.Go(func() error { return frozen.Run(ctx) })
	for i := range 5 {
		addFor(t, dbA, "c", i)
	}
	read(t, ctx, js, 5)
	require.Eventually(t, func() bool { return !lockHeld(t, dbB) }, 10*time.Second, 10*time.Millisecond,
		"the session idle past its lease ends, and the lock with it")

	other := outbox.NewRelay(dbB, js, testkit.Logger(t))
	runs.Go(func() error { return other.Run(ctx) })
	for i := 5; i < 10; i++ {
		addFor(t, dbA, "c", i) // wakes the relay whose session is gone
		addFor(t, dbB, "c", i+5)
	}
	require.Eventually(t, func() bool { return outboxRows(t, dbB) == 0 }, 10*time.Second, 10*time.Millisecond)
	events := read(t, ctx, js, 15)
	got := make([]string, len(events))
	for i, e := range events {
		got[i] = e.GetMeta().GetDetail()
	}
	require.Equal(t, []string{"0", "1", "2", "3", "4", "5", "10", "6", "11", "7", "12", "8", "13", "9", "14"}, got)
	require.EqualValues(t, 15, streamMsgs(t, ctx, js), "each event exactly once")
	cancel()
	require.NoError(t, runs.Wait())
}

// A publish that fails in the middle of a batch: no later row of its
// subject is stored ahead of it (nor, sent with expectations, any later row
// at all), and the next rounds store the rest behind it, each event once.
// Once the relay knows the stream's last sequence the whole batch goes out
// pipelined (one wait for acknowledgements); before that, in waves.
func TestRelayNeverStoresARowAheadOfOneThatFailed(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			_, _, js := testkit.NATS(t)
			db := openOutboxDB(t, b)
			stream, err := js.Stream(ctx, natsx.StreamDelivery)
			require.NoError(t, err)
			limit := func(maxMsgSize int32) {
				cfg := stream.CachedInfo().Config
				cfg.MaxMsgSize = maxMsgSize
				_, err := js.UpdateStream(ctx, cfg)
				require.NoError(t, err)
			}
			limit(512) // a row with a larger payload fails
			write := func(evs ...[2]string) {
				var out []outbox.Event
				for _, e := range evs {
					id := "ev-" + e[0] + "-" + e[1]
					out = append(out, outbox.Event{ID: id, Subject: natsx.Tenant(natsx.SubjectDeliveryAccess, "p", e[0]),
						Msg: &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p", Resource: e[0], Detail: e[1]}}})
				}
				require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, out) }))
			}
			relay := outbox.NewRelay(db, js, testkit.Logger(t))
			write([2]string{"c", "0"})
			n, err := relay.Flush(ctx)
			require.NoError(t, err)
			require.Equal(t, 1, n)

			big := strings.Repeat("x", 600)
			write([2]string{"a", "1"}, [2]string{"a", big}, [2]string{"b", "1"}, [2]string{"a", "3"}, [2]string{"a", "4"}, [2]string{"b", "2"})
			_, waits0 := relay.Stats()
			_, err = relay.Flush(ctx)
			require.Error(t, err, "the large row fails")
			_, waits1 := relay.Stats()
			if db.Dialect() == sqldb.SQLite {
				// The SQLite relay kept the stream's last sequence from
				// its first round: one wait for the whole batch.
				require.EqualValues(t, 1, waits1-waits0, "waits for acknowledgements")
			}
			details := func() map[string][]string {
				info, err := stream.Info(ctx)
				require.NoError(t, err)
				got := map[string][]string{}
				for _, e := range read(t, ctx, js, int(info.State.Msgs)) {
					got[e.GetMeta().GetResource()] = append(got[e.GetMeta().GetResource()], e.GetMeta().GetDetail())
				}
				return got
			}
			stored := details()
			require.Equal(t, []string{"1"}, stored["a"], "nothing of a behind its failed row")
			// In waves b's second row goes out beside a's failed one.
			require.Subset(t, []string{"1", "2"}, stored["b"])
			if len(stored["b"]) == 1 {
				require.Equal(t, "1", stored["b"][0])
			}

			limit(-1)
			for {
				n, err := relay.Flush(ctx)
				require.NoError(t, err)
				if n == 0 {
					break
				}
			}
			stored = details()
			require.Equal(t, []string{"1", big, "3", "4"}, stored["a"])
			require.Equal(t, []string{"1", "2"}, stored["b"])
			require.EqualValues(t, 7, streamMsgs(t, ctx, js), "each event exactly once")
		})
	}
}

// A relay that starts over rows already on the stream (an SQLite relay
// deletes what it published once a second: a restart publishes them again)
// stores each event once, learns the stream's last sequence from a round
// sent in waves, and then pipelines.
func TestRestartedRelayRepublishesThenPipelines(t *testing.T) {
	ctx := context.Background()
	_, _, js := testkit.NATS(t)
	db := testkit.OpenDB(t, testkit.Backends()[0])
	_, err := db.Exec(ctx, schema)
	require.NoError(t, err)
	flush := func(r *outbox.Relay) {
		for {
			n, err := r.Flush(ctx)
			require.NoError(t, err)
			if n == 0 {
				return
			}
		}
	}
	for i := range 10 {
		addFor(t, db, fmt.Sprint("c", i%2), i)
	}
	flush(outbox.NewRelay(db, js, testkit.Logger(t)))
	// The restarted relay finds them in the outbox again.
	_, err = db.Exec(ctx, `DELETE FROM outbox`)
	require.NoError(t, err)
	for i := range 10 {
		addFor(t, db, fmt.Sprint("c", i%2), i)
	}

	relay := outbox.NewRelay(db, js, testkit.Logger(t))
	for i := 10; i < 20; i++ {
		addFor(t, db, fmt.Sprint("c", i%2), i)
	}
	flush(relay) // duplicates first: in waves
	_, waits0 := relay.Stats()
	for i := 20; i < 30; i++ {
		addFor(t, db, fmt.Sprint("c", i%2), i)
	}
	flush(relay)
	_, waits1 := relay.Stats()
	require.EqualValues(t, 1, waits1-waits0, "the second round is one wait")
	next := map[string]int{"c0": 0, "c1": 1}
	for _, e := range read(t, ctx, js, 30) {
		conv := e.GetMeta().GetResource()
		require.Equal(t, fmt.Sprint(next[conv]), e.GetMeta().GetDetail(), "%s out of order or duplicated", conv)
		next[conv] += 2
	}
	require.EqualValues(t, 30, streamMsgs(t, ctx, js), "each event exactly once")
}

// openOutboxDB opens a database of backend b with the outbox table of its
// dialect.
func openOutboxDB(t testing.TB, b testkit.Backend) *sqldb.DB {
	db := testkit.OpenDB(t, b)
	ddl := schema
	if db.Dialect() == sqldb.Postgres {
		ddl = pgSchema
	}
	_, err := db.Exec(context.Background(), ddl)
	require.NoError(t, err)
	return db
}

// gatedPub holds back the acknowledgements of the publishes made while it
// is armed until gate closes, and reports each such publish's message id.
type gatedPub struct {
	armed     atomic.Bool
	gate      chan struct{}
	published chan string
}

func (g *gatedPub) publish(m *nats.Msg, nc *nats.Conn) error {
	if !g.armed.Load() {
		return nc.PublishMsg(m)
	}
	i, err := publishIntercepted(nc, m)
	if err != nil {
		return err
	}
	g.published <- m.Header.Get(jetstream.MsgIDHeader)
	go func() {
		<-g.gate
		_ = i.forward()
	}()
	return nil
}

// accessWriter returns a write of one commit with an event for each of
// conversations c0–c3 of practice p, its id "<prefix>-c<n>" and its
// detail prefix.
func accessWriter(t *testing.T, ctx context.Context, db *sqldb.DB) func(prefix string) {
	subject := func(c int) string { return natsx.Tenant(natsx.SubjectDeliveryAccess, "p", fmt.Sprintf("c%d", c)) }
	return func(prefix string) {
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
			for c := range 4 {
				id := fmt.Sprintf("%s-c%d", prefix, c)
				if err := outbox.Add(ctx, tx, id, subject(c),
					&typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p", Resource: fmt.Sprintf("c%d", c), Detail: prefix}}); err != nil {
					return err
				}
			}
			return nil
		}))
	}
}

// Rows committed while the SQLite relay waits for a round's
// acknowledgements are sent at once, chained behind the rows in flight, in
// the same round (one wait), and each event is still stored once, in order
// per conversation.
func TestRelaySendsRowsCommittedWhileItWaits(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, js := testkit.NATS(t)
	db := openOutboxDB(t, testkit.Backends()[0])
	require.NotEqual(t, sqldb.Postgres, db.Dialect())
	g := &gatedPub{gate: make(chan struct{}), published: make(chan string, 64)}
	write := accessWriter(t, ctx, db)

	relay := outbox.NewRelay(db, js, testkit.Logger(t))
	outbox.OnPublish(relay, g.publish)
	relay.AckWait = time.Minute
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	// A first round (in waves) teaches the relay the stream's last sequence.
	write("a")
	require.Eventually(t, func() bool { return streamMsgs(t, ctx, js) == 4 }, 10*time.Second, 5*time.Millisecond)

	// The next round is chained; its acknowledgements are held back while
	// more rows commit.
	g.armed.Store(true)
	write("b")
	for range 4 {
		<-g.published
	}
	// Every commit during the wait goes out as it comes, not only the
	// first one per acknowledgement awaited (c, then d and e while the
	// first acknowledgement is still held back).
	var sentWhileWaiting []string
	for _, prefix := range []string{"c", "d", "e"} {
		write(prefix)
		for range 4 {
			select {
			case id := <-g.published:
				sentWhileWaiting = append(sentWhileWaiting, id)
			case <-time.After(10 * time.Second): // a bound on a hang, not a wait for an event
				t.Fatalf("rows committed during the wait were not sent before its acknowledgements (sent: %v)", sentWhileWaiting)
			}
		}
	}
	close(g.gate)
	require.Equal(t, []string{"c-c0", "c-c1", "c-c2", "c-c3", "d-c0", "d-c1", "d-c2", "d-c3", "e-c0", "e-c1", "e-c2", "e-c3"},
		sentWhileWaiting)

	events := read(t, ctx, js, 20)
	require.Len(t, events, 20)
	order := map[string]string{}
	for _, e := range events {
		conv := e.GetMeta().GetResource()
		order[conv] += e.GetMeta().GetDetail()
	}
	for c := range 4 {
		require.Equal(t, "abcde", order[fmt.Sprintf("c%d", c)], "conversation c%d's events in write order", c)
	}
	require.EqualValues(t, 20, streamMsgs(t, ctx, js), "each event once")
	// The stream has the events before the relay has counted their
	// acknowledgements (it failed 2 runs in 60 without this wait).
	require.Eventually(t, func() bool { published, _ := relay.Stats(); return published == 20 }, 10*time.Second, time.Millisecond)
	published, waits := relay.Stats()
	require.EqualValues(t, 2, waits, "one wait for the first round's wave, one for the second round with the rows taken while it waited")
	require.EqualValues(t, published-outbox.Loaded(relay), outbox.HandedOff(relay),
		"every row handed over by its commit, and only those, timed from the hand-off to its send")
	require.NotZero(t, outbox.HandedOff(relay))
	cancel()
	require.NoError(t, <-done)
}

// A chained SQLite round that takes every commit made while it waits still
// gives up on a publish that is never acknowledged, however often commits
// come (each taken would otherwise put the round's AckWait off again), and
// the next round sends its rows again.
func TestRelayGivesUpOnAnUnansweredPublishWhileCommitsKeepComing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, js := testkit.NATS(t)
	db := openOutboxDB(t, testkit.Backends()[0])
	g := &gatedPub{gate: make(chan struct{}), published: make(chan string, 64)}
	write := accessWriter(t, ctx, db)
	relay := outbox.NewRelay(db, js, testkit.Logger(t))
	outbox.OnPublish(relay, g.publish)
	relay.AckWait = 300 * time.Millisecond
	relay.Batch = 1 << 20 // the round never fills: only the wait's bound ends it
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	write("a") // a first round (in waves) teaches the relay the stream's last sequence
	require.Eventually(t, func() bool { return streamMsgs(t, ctx, js) == 4 }, 10*time.Second, 5*time.Millisecond)

	// Every acknowledgement from now on is held back; commits keep coming,
	// more often than AckWait, each taken by the round that waits.
	g.armed.Store(true)
	write("b")
	pace := time.NewTicker(50 * time.Millisecond) // the commits' pace, not a wait for an event
	defer pace.Stop()
	sent := map[string]int{}
	for writes := 0; sent["b-c0"] < 2; {
		select {
		case id := <-g.published:
			sent[id]++
		case <-pace.C:
			require.Less(t, writes, 200, "b-c0 was never sent again: every commit put the round's wait off")
			write(fmt.Sprintf("t%d", writes))
			writes++
		}
	}
	require.Greater(t, sent["t0-c0"], 0, "the round took the commits made while it waited")
	close(g.gate)
	cancel()
	for { // the relay may still send (its next rounds) until it stops
		select {
		case <-g.published:
		case err := <-done:
			require.NoError(t, err)
			return
		}
	}
}

// The PostgreSQL relay reads every row not yet published, with no cursor: a
// row whose transaction took its seq first but committed after a later row
// was published goes out in the next round, after it (never skipped). The
// two are of different threads here: rows of one thread cannot do this, as
// their writers take the thread's row lock before the outbox row's seq
// (see Relay). The late row's INSERT runs at once (AddNow): AddAll's goes
// with the COMMIT, which narrows the window between seq and commit but does
// not close it.
func TestPostgresRelayPublishesARowCommittedLateWithALowerSeq(t *testing.T) {
	ctx := context.Background()
	_, _, js := testkit.NATS(t)
	db := openOutboxDB(t, testkit.Backends()[1])
	r := outbox.NewRelay(db, js, testkit.Logger(t))
	inserted, commit := make(chan struct{}), make(chan struct{})
	late := make(chan error, 1)
	go func() {
		late <- db.Write(ctx, func(tx *sqldb.Tx) error {
			if err := outbox.AddNow(ctx, tx, "late", natsx.SubjectDeliveryAccess,
				&typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: "late", Practice: "p", Resource: "c1"}}); err != nil {
				return err
			}
			close(inserted)
			<-commit
			return nil
		})
	}()
	<-inserted
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
		return outbox.Add(ctx, tx, "early", natsx.SubjectDeliveryAccess,
			&typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: "early", Practice: "p", Resource: "c2"}})
	}))
	n, err := r.Flush(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n, "only the committed row")
	close(commit)
	require.NoError(t, <-late)
	var lateSeq, rows int
	require.NoError(t, db.QueryRow(ctx, `SELECT seq, (SELECT count(*) FROM outbox) FROM outbox WHERE id = 'late'`).Scan(&lateSeq, &rows))
	require.Equal(t, 1, rows, "the published row is deleted")
	require.Equal(t, 1, lateSeq, "the late row took the lower seq")
	n, err = r.Flush(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	events := read(t, ctx, js, 2)
	require.Equal(t, "early", events[0].GetMeta().GetId())
	require.Equal(t, "late", events[1].GetMeta().GetId())
	require.Zero(t, outboxRows(t, db))
}

// A relay that starts over rows a previous process left in an SQLite outbox
// without AUTOINCREMENT publishes and deletes them, and the rows written
// after that get seqs above theirs: published too. (The writer's counter
// used to start after the table's highest seq when first taken from, which
// came after the relay had emptied the table: the next row took seq 1,
// below the relay's published mark, and was never sent.)
func TestRelayAfterARestartSendsRowsWrittenAfterItEmptiedTheOutbox(t *testing.T) {
	ctx := context.Background()
	_, _, js := testkit.NATS(t)
	path := filepath.Join(t.TempDir(), "outbox.db")
	before, err := sqldb.Open(ctx, path)
	require.NoError(t, err)
	_, err = before.Exec(ctx, `CREATE TABLE outbox (seq INTEGER PRIMARY KEY, id TEXT NOT NULL,
		subject TEXT NOT NULL, payload BLOB NOT NULL, created_at BIGINT NOT NULL, traceparent TEXT)`)
	require.NoError(t, err)
	for i := range 3 {
		add(t, before, i)
	}
	require.NoError(t, before.Close()) // the previous process, its rows unpublished

	db, err := sqldb.Open(ctx, path)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	relay := outbox.NewRelay(db, js, testkit.Logger(t))
	flush := func() {
		for {
			n, err := relay.Flush(ctx)
			require.NoError(t, err)
			if n == 0 {
				return
			}
		}
	}
	flush()
	// The relay deletes what it published within a second (Run's deleter;
	// Flush leaves the last round's rows): as it would.
	_, err = db.Exec(ctx, `DELETE FROM outbox WHERE seq <= 3`)
	require.NoError(t, err)
	require.Zero(t, outboxRows(t, db), "the left rows published and deleted")
	add(t, db, 3)
	flush()
	got := read(t, ctx, js, 4)
	for i, e := range got {
		require.Equal(t, fmt.Sprintf("ev-%04d", i), e.GetMeta().GetId())
	}
	require.EqualValues(t, 4, streamMsgs(t, ctx, js), "each event once")
}

// The PostgreSQL relay's idle look for a row does not step over the rows
// deleted since the last vacuum: once one look has passed them, the next
// reads a few pages, not every page the deleted rows left.
func TestPostgresProbeSkipsDeletedRows(t *testing.T) {
	ctx := context.Background()
	db, _ := openPostgresTwice(t)
	_, err := db.Exec(ctx, `ALTER TABLE outbox SET (autovacuum_enabled = false)`)
	require.NoError(t, err)
	_, err = db.Exec(ctx, `INSERT INTO outbox (id, subject, payload, created_at)
		SELECT 'id' || g, 's', CAST(repeat('x', 600) AS BYTEA), 0 FROM generate_series(1, 3000) g`)
	require.NoError(t, err)
	var deleter string
	var deleted int
	require.NoError(t, db.QueryRow(ctx, `WITH d AS (DELETE FROM outbox WHERE seq < 2995 RETURNING 1)
		SELECT CAST(pg_current_xact_id() AS text), count(*) FROM d`).Scan(&deleter, &deleted))
	require.Equal(t, 2994, deleted)
	// An index scan marks a deleted row's entry (and later scans skip it)
	// only once the row is dead to every transaction: none may have begun
	// before the delete. Other packages' tests use this server at the same
	// time (CI, Dec 2: one of their transactions left all 260 pages read),
	// so wait until every session's transaction and snapshot is younger.
	require.Eventually(t, func() bool {
		var older int
		require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()
			AND (age(backend_xid) >= age(CAST($1 AS xid)) OR age(backend_xmin) >= age(CAST($1 AS xid)))`, deleter).Scan(&older))
		return older == 0
	}, 60*time.Second, 20*time.Millisecond, "a transaction older than the delete stayed open")
	_, err = db.Exec(ctx, `ANALYZE outbox`)
	require.NoError(t, err)
	var pages int
	require.NoError(t, db.QueryRow(ctx, `SELECT relpages FROM pg_class WHERE oid = CAST('outbox' AS regclass)`).Scan(&pages))
	buffers := func() int {
		var plan string
		require.NoError(t, db.QueryRow(ctx, `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) `+outbox.ProbeSQL).Scan(&plan))
		var p []struct {
			Plan struct {
				Hit int `json:"Shared Hit Blocks"`
				Rd  int `json:"Shared Read Blocks"`
			} `json:"Plan"`
		}
		require.NoError(t, json.Unmarshal([]byte(plan), &p))
		return p[0].Plan.Hit + p[0].Plan.Rd
	}
	buffers() // the first look passes the deleted rows
	require.Less(t, buffers(), pages/4, "a look after the first reads few of the table's %d pages", pages)
}
