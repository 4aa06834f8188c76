package sqldb_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// holdLane starts a write on db (one lane) that keeps the lane busy until
// release is closed, and returns once it runs; then n more writes started
// with start are waiting for the lane (WaitingWrites), so they all join
// the held write's transaction when it lets go.
func holdLane(t *testing.T, db *sqldb.DB, n int, start func(i int)) (release func() error) {
	t.Helper()
	ctx := context.Background()
	running, let := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- db.Write(ctx, func(tx *sqldb.Tx) error {
			if err := insertKV(ctx, tx, "held", 1); err != nil {
				return err
			}
			close(running)
			<-let
			return nil
		})
	}()
	<-running
	for i := range n {
		go start(i)
	}
	deadline := time.Now().Add(10 * time.Second)
	for sqldb.WaitingWrites(db) < n {
		require.True(t, time.Now().Before(deadline), "writes waiting for the lane: %d of %d", sqldb.WaitingWrites(db), n)
		runtime.Gosched()
	}
	return func() error { close(let); return <-done }
}

func txid(ctx context.Context, tx *sqldb.Tx) (int64, error) {
	var id int64
	err := tx.QueryRow(ctx, `SELECT CAST(txid_current() AS BIGINT)`).Scan(&id)
	return id, err
}

// Writes that wait while a transaction is in flight join it and commit with
// it: one that fails (its own error, or a statement's) is rolled back to
// its savepoint, gets its own error and leaves nothing; one that meets a
// serialization failure runs again alone and commits; the others keep
// what they wrote, in the one transaction.
func TestPostgresGroupCommitKeepsTheOthersWhenOneFails(t *testing.T) {
	db := openPG(t, "&group_commit_lanes=1")
	ctx := context.Background()
	errBoom := errors.New("boom")
	const n = 6
	var (
		mu       sync.Mutex
		ids      = map[int]int64{}
		attempts = map[int]int{}
		errs     = make([]error, n)
		wg       sync.WaitGroup
	)
	wg.Add(n)
	release := holdLane(t, db, n, func(i int) {
		defer wg.Done()
		errs[i] = db.Write(ctx, func(tx *sqldb.Tx) error {
			mu.Lock()
			attempts[i]++
			a := attempts[i]
			mu.Unlock()
			id, err := txid(ctx, tx)
			if err != nil {
				return err
			}
			mu.Lock()
			ids[i] = id
			mu.Unlock()
			if err := insertKV(ctx, tx, fmt.Sprintf("w%d", i), a); err != nil {
				return err
			}
			switch i {
			case 1:
				return errBoom
			case 2: // a failed statement: "held" 1 is there already
				return insertKV(ctx, tx, "held", 1)
			case 3:
				if a == 1 {
					var x int
					return tx.QueryRow(ctx, `SELECT raise_state(?)`, "40001").Scan(&x)
				}
			}
			return nil
		})
	})
	require.NoError(t, release())
	wg.Wait()

	require.ErrorIs(t, errs[1], errBoom)
	require.True(t, sqldb.IsUniqueViolation(errs[2]), "%v", errs[2])
	for _, i := range []int{0, 3, 4, 5} {
		require.NoError(t, errs[i], i)
	}
	require.Equal(t, 2, attempts[3], "the serialization failure ran again")
	// The writes that succeeded at once shared one transaction; the retried
	// one committed in another.
	require.Equal(t, ids[0], ids[4])
	require.Equal(t, ids[0], ids[5])
	require.NotEqual(t, ids[0], ids[3])
	require.Equal(t, []string{"held", "w0", "w3", "w4", "w5"}, kvKeys(t, db))
	var w3 int
	require.NoError(t, db.QueryRow(ctx, `SELECT i FROM kv WHERE k = 'w3'`).Scan(&w3))
	require.Equal(t, 2, w3, "only the second attempt's row")
	requireUsable(t, db, "after")
}

// Sends to one thread keep their order through group commits, within one
// transaction and between two processes' lanes (two DBs on one database,
// as two delivery replicas): each send takes the thread's next seq from its
// counter row (an upsert that holds the row's lock until the commit) and
// writes its outbox row after it, held back to the COMMIT
// (ExecAtCommit), as delivery's store does. Read in outbox order, every
// thread's seqs rise one by one.
func TestPostgresGroupCommitKeepsEachThreadsOrder(t *testing.T) {
	a := openPG(t, "&group_commit_lanes=2")
	ctx := context.Background()
	_, err := a.Raw().ExecContext(ctx, `CREATE TABLE seqs (thread TEXT PRIMARY KEY, last BIGINT NOT NULL);
		CREATE TABLE ob (oseq BIGSERIAL PRIMARY KEY, thread TEXT NOT NULL, seq BIGINT NOT NULL, tx BIGINT NOT NULL)`)
	require.NoError(t, err)
	var schema string
	require.NoError(t, a.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema))
	b := openPGSchema(t, schema, "&group_commit_lanes=2&pool_max_conns=2")
	const senders, each = 12, 30
	var wg sync.WaitGroup
	errs := make(chan error, senders*each)
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db, thread := a, fmt.Sprintf("t%d", s%2)
			if s%4 >= 2 {
				db = b
			}
			for range each {
				errs <- db.Write(ctx, func(tx *sqldb.Tx) error {
					var seq int64
					if err := tx.QueryRow(ctx, `INSERT INTO seqs (thread, last) VALUES (?, 1)
						ON CONFLICT (thread) DO UPDATE SET last = seqs.last + 1 RETURNING last`, thread).Scan(&seq); err != nil {
						return err
					}
					return tx.ExecAtCommit(ctx, `INSERT INTO ob (thread, seq, tx) VALUES (?, ?, CAST(txid_current() AS BIGINT))`, thread, seq)
				})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	rows, err := a.Query(ctx, `SELECT thread, seq FROM ob ORDER BY oseq`)
	require.NoError(t, err)
	last := map[string]int64{}
	for rows.Next() {
		var th string
		var seq int64
		require.NoError(t, rows.Scan(&th, &seq))
		require.Equal(t, last[th]+1, seq, "thread %s", th)
		last[th] = seq
	}
	require.NoError(t, rows.Close())
	require.Equal(t, map[string]int64{"t0": senders / 2 * each, "t1": senders / 2 * each}, last)
	var txs int
	require.NoError(t, a.QueryRow(ctx, `SELECT count(DISTINCT tx) FROM ob`).Scan(&txs))
	t.Logf("%d sends in %d transactions", senders*each, txs)
}

// openPGSchema opens schema (another DB's) with its own pool.
func openPGSchema(t testing.TB, schema, params string) *sqldb.DB {
	t.Helper()
	dsn := testkit.PostgresDSN()
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	db, err := sqldb.Open(context.Background(), dsn+sep+"search_path="+schema+params)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// A setting a write sets (SetLocal) holds for its own statements only, not
// for the next write of its transaction.
func TestPostgresGroupCommitScopesSetLocal(t *testing.T) {
	db := openPG(t, "&group_commit_lanes=1")
	ctx := context.Background()
	setting := func(tx *sqldb.Tx) (string, error) {
		var v string
		err := tx.QueryRow(ctx, `SELECT current_setting(?)`, "plan_cache_mode").Scan(&v)
		return v, err
	}
	var seen [2]string
	var ids [2]int64
	errs := make(chan error, 2)
	release := holdLane(t, db, 1, func(int) {
		errs <- db.Write(ctx, func(tx *sqldb.Tx) error {
			if err := tx.SetLocal(ctx, "plan_cache_mode", "force_generic_plan"); err != nil {
				return err
			}
			var err error
			if ids[0], err = txid(ctx, tx); err != nil {
				return err
			}
			seen[0], err = setting(tx)
			return err
		})
	})
	go func() {
		errs <- db.Write(ctx, func(tx *sqldb.Tx) error {
			var err error
			if ids[1], err = txid(ctx, tx); err != nil {
				return err
			}
			seen[1], err = setting(tx)
			return err
		})
	}()
	for sqldb.WaitingWrites(db) < 2 {
		runtime.Gosched()
	}
	require.NoError(t, release())
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
	require.Equal(t, ids[0], ids[1], "one transaction")
	require.Equal(t, [2]string{"force_generic_plan", "auto"}, seen)
}

// A joined write that waits for a lock another transaction holds gives way
// after lock_timeout instead of holding its transaction's other writes
// (and their locks) up: it is rolled back to its savepoint, the others
// commit, and it runs again alone, waiting for the lock as long as it
// takes.
func TestPostgresGroupCommitJoinedWriteGivesWayOnALock(t *testing.T) {
	db := openPG(t, "&group_commit_lanes=1")
	ctx := context.Background()
	var schema string
	require.NoError(t, db.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema))
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return insertKV(ctx, tx, "locked", 1) }))
	other := openPGSchema(t, schema, "&group_commit_lanes=0&pool_max_conns=1")
	locked, letOther := make(chan struct{}), make(chan struct{})
	otherDone := make(chan error, 1)
	go func() {
		otherDone <- other.Write(ctx, func(tx *sqldb.Tx) error {
			if _, err := tx.Exec(ctx, `UPDATE kv SET v = 'other' WHERE k = ?`, "locked"); err != nil {
				return err
			}
			close(locked)
			<-letOther
			return nil
		})
	}()
	<-locked
	errs := make([]chan error, 2)
	for i := range errs {
		errs[i] = make(chan error, 1)
	}
	release := holdLane(t, db, 2, func(i int) {
		errs[i] <- db.Write(ctx, func(tx *sqldb.Tx) error {
			if i == 1 {
				_, err := tx.Exec(ctx, `UPDATE kv SET v = 'joined' WHERE k = ?`, "locked")
				return err
			}
			return insertKV(ctx, tx, "free", 1)
		})
	})
	// The held write and the free one commit while the lock is still held.
	require.NoError(t, release())
	deadline := time.Now().Add(10 * time.Second)
	for sqldb.AloneWrites(db) < 1 {
		require.True(t, time.Now().Before(deadline), "the locked write never gave way")
		runtime.Gosched()
	}
	require.NoError(t, <-errs[0], "committed with the held write, the lock still held")
	close(letOther)
	require.NoError(t, <-otherDone)
	require.NoError(t, <-errs[1])
	require.Contains(t, kvKeys(t, db), "free")
	var v string
	require.NoError(t, db.QueryRow(ctx, `SELECT v FROM kv WHERE k = ?`, "locked").Scan(&v))
	require.Equal(t, "joined", v, "the joined write ran again after the other transaction")
	require.EqualValues(t, 1, sqldb.AloneWrites(db))
}

// On PostgreSQL, values handed over with a write reach the receiver after
// its commit, before the write returns: a write alone, and every write a
// group commit kept, in the order the transaction took them; a write that
// failed (alone, or a job of a group commit rolled back to its savepoint)
// hands nothing over.
func TestPostgresHandedValuesArriveOnlyFromCommittedWrites(t *testing.T) {
	db := openPG(t, "&group_commit_lanes=1")
	ctx := context.Background()
	handed := sqldb.CollectHanded(db, "kv")
	boom := errors.New("boom")
	write := func(k string, fail bool) func(tx *sqldb.Tx) error {
		return func(tx *sqldb.Tx) error {
			if err := insertKV(ctx, tx, k, 0); err != nil {
				return err
			}
			require.True(t, tx.Handing("kv"))
			require.False(t, tx.Handing("other"))
			tx.Hand("kv", k)
			if fail {
				return boom
			}
			return nil
		}
	}
	require.ErrorIs(t, db.Write(ctx, write("alone-failed", true)), boom)
	require.NoError(t, db.Write(ctx, write("alone", false)))
	require.Equal(t, []string{"alone"}, handed(), "a write rolled back alone hands nothing over")

	errs := make(chan error, 3)
	release := holdLane(t, db, 3, func(i int) {
		errs <- db.Write(ctx, write(fmt.Sprintf("joined-%d", i), i == 1))
	})
	require.NoError(t, release())
	require.ElementsMatch(t, []error{nil, nil, boom}, []error{<-errs, <-errs, <-errs})
	require.ElementsMatch(t, []string{"alone", "joined-0", "joined-2"}, handed(), "exactly the committed writes")
	require.ElementsMatch(t, []string{"alone", "held", "joined-0", "joined-2"}, kvKeys(t, db))
}
