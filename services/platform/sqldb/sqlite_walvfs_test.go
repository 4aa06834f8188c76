package sqldb

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// A commit's WAL frames reach the WAL in one write (walVFS), and the reader
// connections see the commit as soon as the write returns.
func TestWALVFSWritesACommitsFramesAtOnce(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "walvfs.db")
	db, err := Open(ctx, path)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	_, err = db.Exec(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, body TEXT NOT NULL)`)
	require.NoError(t, err)
	_, err = db.Exec(ctx, `CREATE INDEX t_k ON t (k)`)
	require.NoError(t, err)
	require.True(t, registerWALVFS())

	for round := range 5 {
		frames0, writes0 := db.metrics.frames.Load(), walWrites.Load()
		require.NoError(t, db.Write(ctx, func(tx *Tx) error {
			for i := range 40 {
				id := round*40 + i
				if _, err := tx.Exec(ctx, `INSERT INTO t (id, k, body) VALUES (?, ?, ?)`, id, fmt.Sprint("k", id%7, "-", id), strings.Repeat("x", 300)); err != nil {
					return err
				}
			}
			return nil
		}))
		frames, writes := db.metrics.frames.Load()-frames0, walWrites.Load()-writes0
		require.GreaterOrEqual(t, frames, uint64(3), "a commit of several pages")
		require.EqualValues(t, 1, writes, "round %d: %d frames in one write", round, frames)
		var n int
		require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&n))
		require.Equal(t, (round+1)*40, n)
	}
}

// walConn opens one connection of its own to path through vfs, with the
// writer's durability (WAL, synchronous=FULL) and a page cache of cachePages.
func walConn(t *testing.T, path, vfs string, cachePages int, sync ...string) *sql.Conn {
	t.Helper()
	q := url.Values{"vfs": {vfs}}
	mode := "FULL"
	if len(sync) > 0 {
		mode = sync[0]
	}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(" + mode + ")", "wal_autocheckpoint(0)", fmt.Sprintf("cache_size(%d)", cachePages)} {
		q.Add("_pragma", p)
	}
	pool, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	require.NoError(t, err)
	t.Cleanup(func() { _ = pool.Close() })
	c, err := pool.Conn(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// crashImage copies the database and its WAL as they are on disk now (what
// a crash would leave), opens the copy with SQLite's default VFS (which
// recovers the WAL, checking every frame's checksum) and returns its
// integrity check and its rows and their sum.
func crashImage(t *testing.T, path string) (check string, rows, sum int64) {
	t.Helper()
	dir := t.TempDir()
	for _, suffix := range []string{"", "-wal"} {
		require.NoError(t, copyFile(path+suffix, filepath.Join(dir, "c.db"+suffix)))
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "c.db"))
	require.NoError(t, err)
	defer db.Close()
	ctx := context.Background()
	require.NoError(t, db.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&check))
	require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(v), 0) FROM t`).Scan(&rows, &sum))
	return check, rows, sum
}

// The WAL walVFS leaves on disk after each commit is one SQLite recovers to
// exactly the committed state, through the cases where SQLite writes the
// WAL other than by appending a commit's frames: transactions larger than
// the page cache (frames written before the commit, pages then written
// again in place within the transaction and the checksums rewritten at its
// commit), one larger than what walVFS holds (walMaxHeld), a rolled back
// transaction whose spilled frames the next commit writes over, and a WAL
// started again from its beginning after a checkpoint.
func TestWALVFSCrashImageHoldsEveryCommit(t *testing.T) {
	require.True(t, registerWALVFS())
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "crash.db")
	c := walConn(t, path, walVFSName, 20) // 20 pages: large transactions spill
	_, err := c.ExecContext(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, body TEXT NOT NULL)`)
	require.NoError(t, err)
	_, err = c.ExecContext(ctx, `CREATE INDEX t_v ON t (v)`)
	require.NoError(t, err)
	var rows, sum int64
	expect := func(what string) {
		t.Helper()
		check, n, s := crashImage(t, path)
		require.Equal(t, "ok", check, what)
		require.Equal(t, rows, n, what)
		require.Equal(t, sum, s, what)
	}
	insert := func(tx *sql.Tx, from, n int, body int) {
		t.Helper()
		for i := from; i < from+n; i++ {
			_, err := tx.ExecContext(ctx, `INSERT INTO t (id, v, body) VALUES (?, ?, ?)`, i, i, strings.Repeat("b", body))
			require.NoError(t, err)
		}
	}
	writes0 := walWrites.Load()

	// Small commits.
	for i := range 10 {
		tx, err := c.BeginTx(ctx, nil)
		require.NoError(t, err)
		insert(tx, i*10, 10, 100)
		require.NoError(t, tx.Commit())
		rows, sum = rows+10, sum+int64(i*10*10+45)
		expect(fmt.Sprint("small commit ", i))
	}
	require.Less(t, walWrites.Load()-writes0, uint64(20), "a write or two per small commit")

	// A transaction that spills, then writes its spilled pages again (the
	// frames overwritten in place, their checksums rewritten at COMMIT).
	tx, err := c.BeginTx(ctx, nil)
	require.NoError(t, err)
	insert(tx, 1000, 400, 400)
	_, err = tx.ExecContext(ctx, `UPDATE t SET v = v + 1, body = body || 'x' WHERE id >= 1000`)
	require.NoError(t, err)
	require.NoError(t, tx.Commit())
	rows += 400
	for i := 1000; i < 1400; i++ {
		sum += int64(i + 1)
	}
	expect("a spilled transaction")

	// Larger than walMaxHeld (~1.6 MB of rows).
	tx, err = c.BeginTx(ctx, nil)
	require.NoError(t, err)
	insert(tx, 10000, 2000, 800)
	require.NoError(t, tx.Commit())
	rows += 2000
	for i := 10000; i < 12000; i++ {
		sum += int64(i)
	}
	expect("a transaction larger than walMaxHeld")

	// A rolled back transaction that spilled; the next commit writes over
	// its frames.
	tx, err = c.BeginTx(ctx, nil)
	require.NoError(t, err)
	insert(tx, 20000, 400, 400)
	require.NoError(t, tx.Rollback())
	expect("after a rollback")
	tx, err = c.BeginTx(ctx, nil)
	require.NoError(t, err)
	insert(tx, 30000, 5, 10)
	require.NoError(t, tx.Commit())
	rows, sum = rows+5, sum+5*30000+10
	expect("a commit after a rollback")

	// The WAL checkpointed in full, then started again from its beginning.
	var busy, log, done int
	require.NoError(t, c.QueryRowContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &log, &done))
	require.Equal(t, log, done)
	for i := range 3 {
		tx, err = c.BeginTx(ctx, nil)
		require.NoError(t, err)
		insert(tx, 40000+i*10, 10, 100)
		require.NoError(t, tx.Commit())
		rows, sum = rows+10, sum+int64((40000+i*10)*10+45)
		expect(fmt.Sprint("a commit into the restarted WAL ", i))
	}
	frames, err := readWAL(path + "-wal")
	require.NoError(t, err)
	require.Less(t, len(frames), 100, "the WAL started again")
}

// A commit's frames are written when its last frame is, not at the sync: a
// connection that does not sync (synchronous=NORMAL; none of sqldb's) still
// leaves every commit in the file before another connection can see it.
func TestWALVFSCommitReachesTheFileWithoutASync(t *testing.T) {
	require.True(t, registerWALVFS())
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "normal.db")
	c := walConn(t, path, walVFSName, 100, "NORMAL")
	_, err := c.ExecContext(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)`)
	require.NoError(t, err)
	for i := range 5 {
		_, err := c.ExecContext(ctx, `INSERT INTO t (id, v) VALUES (?, ?)`, i, i)
		require.NoError(t, err)
		check, n, sum := crashImage(t, path)
		require.Equal(t, "ok", check)
		require.EqualValues(t, i+1, n)
		require.EqualValues(t, i*(i+1)/2, sum)
	}
}

// Without walVFS the same database writes its frames two writes each: the
// shim is what makes the difference (and only for files opened through it).
func TestWALVFSOnlyItsOwnFiles(t *testing.T) {
	require.True(t, registerWALVFS())
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "plain.db")
	c := walConn(t, path, "unix-excl", 100)
	_, err := c.ExecContext(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, body TEXT NOT NULL)`)
	require.NoError(t, err)
	writes0 := walWrites.Load()
	_, err = c.ExecContext(ctx, `INSERT INTO t (id, v, body) VALUES (1, 1, 'x')`)
	require.NoError(t, err)
	require.Zero(t, walWrites.Load()-writes0)
	_, err = os.Stat(path + "-wal")
	require.NoError(t, err)
}
