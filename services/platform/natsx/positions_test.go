package natsx_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// positionsSchema is the services' consumer_positions migration, and a
// handler's effects: one row per event (idempotent), one per handling.
const positionsSchema = `CREATE TABLE IF NOT EXISTS consumer_positions (durable TEXT PRIMARY KEY, stream_seq INTEGER NOT NULL, stream_created INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS effects (event TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS calls (n INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL)`

func openPositionsDB(t testing.TB, path string) *sqldb.DB {
	t.Helper()
	db, err := sqldb.Open(context.Background(), path)
	require.NoError(t, err)
	for _, q := range strings.Split(positionsSchema, ";\n") {
		_, err := db.Exec(context.Background(), q)
		require.NoError(t, err)
	}
	return db
}

// effectsHandler commits each batch's events (idempotent) and every
// handling in one transaction; after is called with the batch once it is
// committed.
func effectsHandler(db *sqldb.DB, after func([]jetstream.Msg)) natsx.BatchHandler {
	return func(ctx context.Context, msgs []jetstream.Msg) []error {
		err := db.Write(ctx, func(tx *sqldb.Tx) error {
			for _, m := range msgs {
				if _, err := tx.Exec(ctx, `INSERT INTO effects (event) VALUES (?) ON CONFLICT DO NOTHING`, string(m.Data())); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `INSERT INTO calls (event) VALUES (?)`, string(m.Data())); err != nil {
					return err
				}
			}
			return nil
		})
		errs := make([]error, len(msgs))
		for i := range errs {
			errs[i] = err
		}
		if err == nil && after != nil {
			after(msgs)
		}
		return errs
	}
}

// handled is how many times each event was handled (calls).
func handled(t testing.TB, db *sqldb.DB) map[string]int {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT event, COUNT(*) FROM calls GROUP BY event`)
	require.NoError(t, err)
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var e string
		var n int
		require.NoError(t, rows.Scan(&e, &n))
		out[e] = n
	}
	require.NoError(t, rows.Err())
	return out
}

func position(t testing.TB, db *sqldb.DB, durable string) uint64 {
	t.Helper()
	var s int64
	err := db.QueryRow(context.Background(), `SELECT stream_seq FROM consumer_positions WHERE durable = ?`, durable).Scan(&s)
	require.NoError(t, err)
	return uint64(s)
}

// consumePositioned runs ConsumeBatch until every one of want has been handled
// and acked (the memory durable's ack floor at floor), then stops it
// (a clean stop: ConsumeBatch records its position as it returns).
func consumePositioned(t *testing.T, js jetstream.JetStream, db *sqldb.DB, spec natsx.ConsumerSpec, floor uint64, want ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	finished := make(chan error, 1)
	go func() {
		finished <- natsx.ConsumeBatch(runCtx, js, testkit.Logger(t), spec, 8, effectsHandler(db, nil))
	}()
	require.Eventually(t, func() bool {
		h := handled(t, db)
		for _, w := range want {
			if h[w] == 0 {
				return false
			}
		}
		c, err := js.Consumer(ctx, spec.Stream, spec.Durable+natsx.AckAllSuffix)
		return err == nil && c.CachedInfo().AckFloor.Stream == floor && c.CachedInfo().NumAckPending == 0
	}, 20*time.Second, 10*time.Millisecond)
	stop()
	require.NoError(t, <-finished)
	require.Equal(t, floor, position(t, db, spec.Durable), "a clean stop records where the durable ended")
}

// The upgrade and a clean stop: a data dir whose AckAll durable is
// file-stored (today's main) goes on from that durable's ack floor in
// memory, the position in the database, the state file gone; after a
// clean stop and a restart of the server (which keeps no memory durable)
// it goes on from the recorded position: nothing handled twice, nothing
// skipped. A position in a stream made again since starts at its first
// event.
func TestAMemoryDurableGoesOnFromTheFileDurableAndFromItsRecordedPosition(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "nats")
	db := openPositionsDB(t, filepath.Join(dir, "service.db"))
	defer db.Close()
	plain, stop := embeddedStore(t, store)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, natsx.EnsureStreams(ctx, plain, natsx.StreamsConfig{}))
	subject := natsx.SubjectMessageCreated + ".p.x"
	spec := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: "pos", FilterSubjects: []string{subject}}
	name := "pos" + natsx.AckAllSuffix
	obs := func() string {
		m, err := filepath.Glob(filepath.Join(store, "jetstream", "*", "streams", natsx.StreamDelivery, "obs", name))
		require.NoError(t, err)
		return strings.Join(m, ",")
	}

	// Today's main: a file-stored AckAll durable, acked up to 20.
	publishEvents(t, plain, subject, 0, 20)
	newCollect(events(0, 20)...).run(t, natsx.SoleConsumer(plain), spec, name, 20)
	require.NotEmpty(t, obs(), "file-stored")
	publishEvents(t, plain, subject, 20, 30)

	// The upgrade.
	spec.Positions = natsx.DBPositions(db)
	require.NotNil(t, spec.Positions)
	consumePositioned(t, natsx.SoleConsumer(plain), db, spec, 30, events(20, 30)...)
	h := handled(t, db)
	require.Len(t, h, 10, "only what the file durable had not acked: %v", h)
	require.Empty(t, obs(), "no state file any more")
	c, err := plain.Consumer(ctx, natsx.StreamDelivery, name)
	require.NoError(t, err)
	require.True(t, c.CachedInfo().Config.MemoryStorage)

	// Started again in this process (a consumer retried): the memory
	// durable is replaced, from the recorded position.
	publishEvents(t, plain, subject, 30, 35)
	consumePositioned(t, natsx.SoleConsumer(plain), db, spec, 35, events(30, 35)...)

	// A clean stop of the server, and a start on the same store.
	stop()
	plain, stop = embeddedStore(t, store)
	_, err = plain.Consumer(ctx, natsx.StreamDelivery, name)
	require.ErrorIs(t, err, jetstream.ErrConsumerNotFound, "the server kept nothing of it")
	publishEvents(t, plain, subject, 35, 45)
	consumePositioned(t, natsx.SoleConsumer(plain), db, spec, 45, events(35, 45)...)
	h = handled(t, db)
	require.Len(t, h, 25)
	for e, n := range h {
		require.Equal(t, 1, n, "event %s handled once", e)
	}
	require.Empty(t, obs())

	// The stream made again (its store lost) and past the recorded 45
	// before the durable starts: its events are handled from the first.
	stop()
	require.NoError(t, os.RemoveAll(store))
	plain, _ = embeddedStore(t, store)
	require.NoError(t, natsx.EnsureStreams(ctx, plain, natsx.StreamsConfig{}))
	publishEvents(t, plain, subject, 100, 150)
	consumePositioned(t, natsx.SoleConsumer(plain), db, spec, 50, events(100, 150)...)
}

// Only a SoleConsumer on SQLite keeps positions: elsewhere (the
// distributed stack on PostgreSQL, replicas sharing a durable) durables
// stay file-stored and explicitly acked.
func TestPositionsOnlyForASoleConsumerOnSQLite(t *testing.T) {
	require.Nil(t, natsx.DBPositions(nil))
	dir := t.TempDir()
	db := openPositionsDB(t, filepath.Join(dir, "service.db"))
	defer db.Close()
	_, _, plain := testkit.NATS(t)
	subject := natsx.SubjectMessageCreated + ".p.y"
	spec := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: "shared", FilterSubjects: []string{subject},
		Positions: natsx.DBPositions(db)}
	publishEvents(t, plain, subject, 0, 5)
	newCollect(events(0, 5)...).run(t, plain, spec, "shared", 5)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := plain.Consumer(ctx, natsx.StreamDelivery, "shared")
	require.NoError(t, err)
	require.False(t, c.CachedInfo().Config.MemoryStorage)
	require.Equal(t, jetstream.AckExplicitPolicy, c.CachedInfo().Config.AckPolicy)
	var n int
	require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM consumer_positions`).Scan(&n))
	require.Zero(t, n)
}

// crashEvents is how many events the crash test hands over; the first life
// stops (committed, not acked) at the batch that reaches crashAt.
const (
	crashEvents = 400
	crashAt     = 200
)

// A kill -9 of the process: a real embedded server and a real SQLite
// database in a child process, killed right after a batch's commit (its
// events handled, not acked, their position not recorded). The next life
// hands every event exactly once in effect: none is skipped, and only the
// events past the recorded position are handled again (that batch). A
// third life after the second's clean stop hands none of them again.
func TestAMemoryDurableAfterAKill9SkipsNothingAndRedeliversLittle(t *testing.T) {
	if os.Getenv("NATSX_POSITIONS_CHILD") != "" {
		t.Skip("the child's own run")
	}
	dir := t.TempDir()
	life := func(n int, kill bool) map[string]string {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run", "^TestPositionsChild$", "-test.v")
		cmd.Env = append(os.Environ(), "NATSX_POSITIONS_CHILD="+dir, "NATSX_POSITIONS_LIFE="+strconv.Itoa(n))
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		cmd.Stderr = os.Stderr
		require.NoError(t, cmd.Start())
		got := map[string]string{}
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), "=")
			if !ok || !strings.HasPrefix(k, "CHILD ") {
				continue
			}
			got[strings.TrimPrefix(k, "CHILD ")] = v
			if kill && k == "CHILD killme" {
				require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
			}
		}
		werr := cmd.Wait()
		if kill {
			require.Error(t, werr, "killed")
		} else {
			require.NoError(t, werr)
		}
		return got
	}
	first := life(1, true)
	require.Contains(t, first, "killme", "the first life reached the crash point")
	blockedFrom, err := strconv.ParseUint(first["killme"], 10, 64)
	require.NoError(t, err)
	second := life(2, false)
	third := life(3, false)

	var h2, h3 map[string]int
	require.NoError(t, json.Unmarshal([]byte(second["handled"]), &h2))
	require.NoError(t, json.Unmarshal([]byte(third["handled"]), &h3))
	require.Len(t, h2, crashEvents, "every event handled: none skipped")
	again := 0
	for e, n := range h2 {
		i, _ := strconv.Atoi(e)
		require.LessOrEqual(t, n, 2, "event %s", e)
		if n == 2 {
			again++
			// Stream sequence = index + 1 (one subject, published in order).
			require.GreaterOrEqual(t, uint64(i+1), blockedFrom, "event %s was handled and recorded before the kill", e)
		}
	}
	require.Positive(t, again, "the batch committed before the kill, not acked, is handled again")
	require.LessOrEqual(t, again, 8, "no more than that batch")
	require.Len(t, h3, crashEvents+10)
	for e, n := range h3 {
		require.Equal(t, h2[e]+boolInt(h2[e] == 0), n, "event %s: nothing handled again after a clean stop", e)
	}
	require.Equal(t, fmt.Sprint(crashEvents+10), third["position"])
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestPositionsChild is one life of the crash test's child process.
func TestPositionsChild(t *testing.T) {
	dir := os.Getenv("NATSX_POSITIONS_CHILD")
	if dir == "" {
		t.Skip("run by TestAMemoryDurableAfterAKill9SkipsNothingAndRedeliversLittle")
	}
	lifeN, _ := strconv.Atoi(os.Getenv("NATSX_POSITIONS_LIFE"))
	// Every ack recorded: the kill comes right after the position of
	// everything before the blocked batch is (with the default interval,
	// up to an interval's acks before it would be handled again too).
	natsx.PositionInterval = 0
	say := func(k string, v any) { fmt.Printf("CHILD %s=%v\n", k, v) }
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	db := openPositionsDB(t, filepath.Join(dir, "service.db"))
	ns, nc, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: filepath.Join(dir, "nats")}, zap.NewNop())
	require.NoError(t, err)
	plain, err := jetstream.New(nc)
	require.NoError(t, err)
	require.NoError(t, natsx.EnsureStreams(ctx, plain, natsx.StreamsConfig{}))
	subject := natsx.SubjectMessageCreated + ".p.crash"
	spec := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: "crash", FilterSubjects: []string{subject},
		Positions: natsx.DBPositions(db)}
	js := natsx.SoleConsumer(plain)
	switch lifeN {
	case 1:
		publishEvents(t, plain, subject, 0, crashEvents)
		var once sync.Once
		block := make(chan struct{})
		h := effectsHandler(db, func(msgs []jetstream.Msg) {
			last, _ := strconv.Atoi(string(msgs[len(msgs)-1].Data()))
			if last < crashAt {
				return
			}
			once.Do(func() {
				md, err := msgs[0].Metadata()
				require.NoError(t, err)
				from := md.Sequence.Stream
				// Committed, not acked: wait until the position of
				// everything before it is recorded, then ask to be killed.
				require.Eventually(t, func() bool {
					var s int64
					return db.QueryRow(ctx, `SELECT stream_seq FROM consumer_positions WHERE durable = 'crash'`).Scan(&s) == nil &&
						uint64(s) == from-1
				}, 20*time.Second, 5*time.Millisecond)
				say("killme", from)
			})
			<-block // never: the process is killed here
		})
		_ = natsx.ConsumeBatch(ctx, js, zap.NewNop(), spec, 8, h)
		t.Fatal("not killed")
	case 2, 3:
		want := crashEvents
		if lifeN == 3 {
			publishEvents(t, plain, subject, crashEvents, crashEvents+10)
			want += 10
		}
		runCtx, stop := context.WithCancel(ctx)
		finished := make(chan error, 1)
		go func() { finished <- natsx.ConsumeBatch(runCtx, js, zap.NewNop(), spec, 8, effectsHandler(db, nil)) }()
		require.Eventually(t, func() bool {
			var n int
			if db.QueryRow(ctx, `SELECT COUNT(*) FROM effects`).Scan(&n) != nil || n < want {
				return false
			}
			c, err := plain.Consumer(ctx, natsx.StreamDelivery, "crash"+natsx.AckAllSuffix)
			return err == nil && c.CachedInfo().AckFloor.Stream == uint64(want) && c.CachedInfo().NumAckPending == 0
		}, 30*time.Second, 10*time.Millisecond)
		stop()
		require.NoError(t, <-finished)
		b, err := json.Marshal(handled(t, db))
		require.NoError(t, err)
		say("handled", string(b))
		say("position", position(t, db, "crash"))
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
		require.NoError(t, db.Close())
	}
}

// A position past the stream's last event (a stream that lost its tail:
// its files are not fsynced at every write) goes on from that event: the
// events the stream numbers next are handled, though their sequences are
// at or below the recorded position; none before them again.
func TestAMemoryDurablePastItsStreamsLastEventTakesItsNextEvents(t *testing.T) {
	js := embeddedStreams(t)
	db := openPositionsDB(t, filepath.Join(t.TempDir(), "service.db"))
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	subject := natsx.SubjectMessageCreated + ".p.tail"
	publishEvents(t, js, subject, 0, 5)
	st, err := js.Stream(ctx, natsx.StreamDelivery)
	require.NoError(t, err)
	_, err = db.Exec(ctx, `INSERT INTO consumer_positions (durable, stream_seq, stream_created) VALUES ('tail', 1000, ?)`,
		st.CachedInfo().Created.UnixNano())
	require.NoError(t, err)
	spec := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: "tail", FilterSubjects: []string{subject},
		Positions: natsx.DBPositions(db)}
	runCtx, stop := context.WithCancel(ctx)
	finished := make(chan error, 1)
	go func() {
		finished <- natsx.ConsumeBatch(runCtx, natsx.SoleConsumer(js), testkit.Logger(t), spec, 8, effectsHandler(db, nil))
	}()
	require.Eventually(t, func() bool {
		_, err := js.Consumer(ctx, natsx.StreamDelivery, "tail"+natsx.AckAllSuffix)
		return err == nil
	}, 10*time.Second, 5*time.Millisecond)
	publishEvents(t, js, subject, 5, 8)
	require.Eventually(t, func() bool { return len(handled(t, db)) >= 3 }, 10*time.Second, 5*time.Millisecond)
	stop()
	require.NoError(t, <-finished)
	require.Equal(t, map[string]int{"5": 1, "6": 1, "7": 1}, handled(t, db))
	require.Equal(t, uint64(8), position(t, db, "tail"))
}
