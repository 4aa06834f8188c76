package sqldb

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// openKV opens a SQLite database with a table kv (k TEXT PRIMARY KEY) and
// returns it, its commits so far, and a write that inserts a key.
func openKV(t *testing.T) (*DB, *atomic.Int64, func(k string) func(tx *Tx) error) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "t.db"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	_, err = db.Exec(ctx, `CREATE TABLE kv (k TEXT PRIMARY KEY)`)
	require.NoError(t, err)
	commits := &atomic.Int64{}
	db.OnCommit(func() { commits.Add(1) })
	return db, commits, func(k string) func(tx *Tx) error {
		return func(tx *Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO kv (k) VALUES (?)`, k)
			return err
		}
	}
}

// Writes queued while a batch runs join it before its commit: one commit for
// all, the first write (run without a savepoint, alone when it started) kept,
// a failing joiner undone alone.
func TestQueuedWritesJoinTheRunningBatch(t *testing.T) {
	ctx := context.Background()
	db, commits, insert := openKV(t)
	boom := errors.New("boom")
	joined := make(chan error, 2)
	err := db.Write(ctx, func(tx *Tx) error {
		if err := insert("first")(tx); err != nil {
			return err
		}
		go func() {
			joined <- db.Write(ctx, func(tx *Tx) error {
				if err := insert("failed")(tx); err != nil {
					return err
				}
				return boom
			})
		}()
		go func() { joined <- db.Write(ctx, insert("joined")) }()
		for len(db.jobs) < 2 { // both queued behind this running write
			runtime.Gosched()
		}
		return nil
	})
	require.NoError(t, err)
	errs := []error{<-joined, <-joined}
	require.ElementsMatch(t, []error{nil, boom}, errs)
	require.Equal(t, int64(1), commits.Load(), "one commit for the three writes")
	var keys []string
	rows, err := db.Query(ctx, `SELECT k FROM kv ORDER BY k`)
	require.NoError(t, err)
	defer rows.Close()
	for rows.Next() {
		var k string
		require.NoError(t, rows.Scan(&k))
		keys = append(keys, k)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"first", "joined"}, keys)
}

// /metrics counts each commit, the writes it carried and the WAL frames it
// wrote; a write that fails alone rolls back and leaves the writer ready.
func TestSQLiteCommitMetrics(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "orders.db"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	_, err = db.Exec(ctx, `CREATE TABLE kv (k TEXT PRIMARY KEY)`)
	require.NoError(t, err)
	commits0 := testutil.ToFloat64(db.metrics.commits)
	frames0 := db.metrics.frames.Load()

	boom := errors.New("boom")
	require.ErrorIs(t, db.Write(ctx, func(tx *Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO kv (k) VALUES ('undone')`); err != nil {
			return err
		}
		return boom
	}), boom)
	for _, k := range []string{"a", "b", "c"} {
		_, err := db.Exec(ctx, `INSERT INTO kv (k) VALUES (?)`, k)
		require.NoError(t, err)
	}
	var n int
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM kv`).Scan(&n))
	require.Equal(t, 3, n, "the failed write left nothing")

	require.Equal(t, 3.0, testutil.ToFloat64(db.metrics.commits)-commits0, "one commit per write, none for the failed one")
	frames := db.metrics.frames.Load() - frames0
	require.GreaterOrEqual(t, frames, uint64(3), "each commit writes at least one page")
	n, err = testutil.GatherAndCount(registry(t, db), "clinicchat_sqldb_commits_total", "clinicchat_sqldb_batch_jobs", "clinicchat_sqldb_wal_frames_total")
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.NoError(t, testutil.GatherAndCompare(registry(t, db), strings.NewReader(fmt.Sprintf(`
# HELP clinicchat_sqldb_wal_frames_total WAL frames (database pages) written by the SQLite database's commits.
# TYPE clinicchat_sqldb_wal_frames_total counter
clinicchat_sqldb_wal_frames_total{db="orders"} %d
`, db.metrics.frames.Load())), "clinicchat_sqldb_wal_frames_total"))
}

func registry(t *testing.T, db *DB) *prometheus.Registry {
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(db.Collector()))
	return reg
}

// A deferred write starts no commit of its own: it joins the batch another
// write starts (here one queued behind a running batch, and one already
// waiting when an ordinary write comes), and commits alone only when its
// delay has passed.
func TestDeferredWritesJoinAnotherWritesCommit(t *testing.T) {
	ctx := context.Background()
	db, commits, insert := openKV(t)
	const never = time.Hour

	// Queued while a batch runs: it joins that batch.
	joined := make(chan error, 1)
	require.NoError(t, db.Write(ctx, func(tx *Tx) error {
		go func() { joined <- db.WriteDeferred(ctx, never, insert("queued")) }()
		for len(db.deferred) < 1 {
			runtime.Gosched()
		}
		return insert("running")(tx)
	}))
	require.NoError(t, <-joined)
	require.Equal(t, int64(1), commits.Load())

	// Waiting in the writer: the next ordinary write's batch takes it.
	j := &job{ctx: ctx, fn: insert("waiting"), done: make(chan error, 1), due: time.Now().Add(never)}
	db.deferred <- j
	for len(db.deferred) > 0 { // taken by the idle writer, which holds it
		runtime.Gosched()
	}
	require.Equal(t, int64(1), commits.Load(), "a deferred write alone does not commit before its time")
	require.NoError(t, db.Write(ctx, insert("ordinary")))
	require.NoError(t, <-j.done)
	require.Equal(t, int64(2), commits.Load())

	// Alone: committed once its delay has passed.
	require.NoError(t, db.WriteDeferred(ctx, time.Millisecond, insert("alone")))
	require.Equal(t, int64(3), commits.Load())
	var n int
	require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM kv`).Scan(&n))
	require.Equal(t, 5, n)
}

// A deferred write with a short delay is not held to the due time of one
// with a longer delay that came first (a projected batch's 3 ms, then a
// markRead's 0.5 ms): the writer's timer follows the earliest due time of
// what waits, and that batch commits both.
func TestDeferredWriteShorterDelayCommitsAtItsTime(t *testing.T) {
	ctx := context.Background()
	db, commits, insert := openKV(t)
	long := &job{ctx: ctx, fn: insert("long"), done: make(chan error, 1), due: time.Now().Add(time.Hour)}
	db.deferred <- long
	for len(db.deferred) > 0 { // taken by the idle writer, which holds it
		runtime.Gosched()
	}
	short := make(chan error, 1)
	go func() { short <- db.WriteDeferred(ctx, time.Millisecond, insert("short")) }()
	select {
	case err := <-short:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the short deferred write waited for the long one's due time")
	}
	require.NoError(t, <-long.done, "committed with it")
	require.Equal(t, int64(1), commits.Load())
}

// Deferred writes still waiting when the database closes are refused, not
// left hanging.
func TestDeferredWritesFailAtClose(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "t.db"))
	require.NoError(t, err)
	j := &job{ctx: ctx, fn: func(*Tx) error { return nil }, done: make(chan error, 1), due: time.Now().Add(time.Hour)}
	db.deferred <- j
	for len(db.deferred) > 0 {
		runtime.Gosched()
	}
	require.NoError(t, db.Close())
	require.Error(t, <-j.done)
}

// Values handed over with a write reach the receiver after its commit, in
// commit order, before the write returns; those of a write that failed (a
// job of a group commit undone alone, or a write rolled back alone) never
// do. A transaction with no receiver for its topic hands nothing over.
func TestHandedValuesArriveInCommitOrderAndNeverFromARollback(t *testing.T) {
	ctx := context.Background()
	db, _, insert := openKV(t)
	handed := CollectHanded(db, "kv")
	boom := errors.New("boom")
	write := func(k string, fail bool) func(tx *Tx) error {
		return func(tx *Tx) error {
			if err := insert(k)(tx); err != nil {
				return err
			}
			require.True(t, tx.Handing("kv"))
			require.False(t, tx.Handing("other"))
			tx.Hand("kv", k)
			tx.Hand("other", "nobody takes it")
			if fail {
				return boom
			}
			return nil
		}
	}

	require.ErrorIs(t, db.Write(ctx, write("alone-failed", true)), boom)
	require.Empty(t, handed(), "a write rolled back alone hands nothing over")

	joined := make(chan error, 3)
	require.NoError(t, db.Write(ctx, func(tx *Tx) error {
		go func() { joined <- db.Write(ctx, write("joined-failed", true)) }()
		go func() { joined <- db.Write(ctx, write("joined-1", false)) }()
		go func() { joined <- db.Write(ctx, write("joined-2", false)) }()
		for len(db.jobs) < 3 {
			runtime.Gosched()
		}
		return write("first", false)(tx)
	}))
	require.ElementsMatch(t, []error{nil, nil, boom}, []error{<-joined, <-joined, <-joined})

	var keys []string
	rows, err := db.Query(ctx, `SELECT k FROM kv ORDER BY rowid`)
	require.NoError(t, err)
	defer rows.Close()
	for rows.Next() {
		var k string
		require.NoError(t, rows.Scan(&k))
		keys = append(keys, k)
	}
	require.NoError(t, rows.Err())
	require.Len(t, keys, 3)
	require.Equal(t, "first", keys[0])
	require.Equal(t, keys, handed(), "exactly the committed writes, in commit order")
}

// A statement of a SQLite write runs under a context made for it without an
// allocation (context.WithoutCancel was one per statement, ~4 a chat message
// in the all-in-one), which neither the caller's cancellation nor its
// deadline reaches.
var stmtCtxSink context.Context // where the test's contexts go (they escape, as a statement's do)

func TestSQLiteStatementContextWithoutAllocation(t *testing.T) {
	db, _, _ := openKV(t)
	cctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	var allocs float64
	var sctx context.Context
	err := db.Write(cctx, func(tx *Tx) error { // no require here: it would end the writer
		allocs = testing.AllocsPerRun(100, func() { stmtCtxSink = tx.stmtCtx(cctx) })
		sctx = tx.stmtCtx(cctx)
		cancel()
		var n int
		return tx.QueryRow(cctx, `SELECT COUNT(*) FROM kv`).Scan(&n)
	})
	require.NoError(t, err)
	require.Zero(t, allocs)
	require.Nil(t, sctx.Done())
	require.NoError(t, sctx.Err())
	_, ok := sctx.Deadline()
	require.False(t, ok)
}

// A write's job and its channel come from a pool: a Write allocates no more
// than its transaction and what its statements do (3 allocations fewer a
// write than with a new job and channel each), and a pooled job carries
// nothing of the write before it.
func TestSQLiteWriteReusesItsJob(t *testing.T) {
	ctx := context.Background()
	db, _, _ := openKV(t)
	noop := func(tx *Tx) error { return nil }
	require.NoError(t, db.Write(ctx, noop))
	allocs := testing.AllocsPerRun(200, func() {
		if err := db.Write(ctx, noop); err != nil {
			panic(err)
		}
	})
	require.LessOrEqual(t, allocs, float64(wantWriteAllocs))
	boom := errors.New("boom")
	for i := range 50 { // outcomes never leak from one write into the next
		var want error
		if i%2 == 0 {
			want = boom
		}
		require.ErrorIs(t, db.Write(ctx, func(tx *Tx) error { return want }), want)
		if want == nil {
			require.NoError(t, db.Write(ctx, noop))
		}
	}
	j := newJob(ctx, noop)
	jobs.put(j)
	require.Nil(t, j.ctx)
	require.Nil(t, j.fn)
	require.Zero(t, len(j.done))
}

const wantWriteAllocs = 7 // 10 with a new job and channel a write
