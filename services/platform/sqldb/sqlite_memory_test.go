package sqldb

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// fillRows writes n rows of ~1 KiB into a new table t of db.
func fillRows(t *testing.T, db *DB, n int) {
	ctx := context.Background()
	require.NoError(t, db.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)`)
		return err
	}))
	for b := 0; b < n; b += 500 {
		require.NoError(t, db.Write(ctx, func(tx *Tx) error {
			for i := b; i < min(b+500, n); i++ {
				if _, err := tx.Exec(ctx, `INSERT INTO t (id, body) VALUES (?, hex(randomblob(500)))`, i); err != nil {
					return err
				}
			}
			return nil
		}))
	}
}

func memoryOf(name string) []ConnMemory {
	var out []ConnMemory
	for _, m := range SQLiteMemory(context.Background()) {
		if m.DB == name {
			out = append(out, m)
		}
	}
	return out
}

// SQLiteMemory lists every connection of an open database — the writer,
// the checkpointer and the idle readers — with what SQLite holds for it,
// and forgets the database once it is closed.
func TestSQLiteMemoryReportsEachConnection(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "memreport.db"))
	require.NoError(t, err)
	fillRows(t, db, 200)
	var n int
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM t WHERE body LIKE '%zz%'`).Scan(&n))

	pools := map[string]ConnMemory{}
	for _, m := range memoryOf("memreport") {
		pools[m.Pool] = m
	}
	require.Len(t, pools, 3, "writer, checkpointer, reader: %v", pools)
	w, r := pools["writer"], pools["reader"]
	require.Positive(t, w.Schema, "the writer has read the schema")
	require.Positive(t, w.Stmts, "the writer keeps its INSERT prepared")
	require.Positive(t, w.Cache)
	require.Positive(t, r.Cache, "the reader's scan left pages in its cache")
	require.Positive(t, r.Misses, "the reader read the table's pages from the file")
	require.Equal(t, w.Cache+w.Schema+w.Stmts+w.Lookaside, w.Total())

	require.NoError(t, db.Close())
	require.Empty(t, memoryOf("memreport"))
}

// Every connection of every database in the process shares one page cache
// (modernc's SQLite is built with SQLITE_ENABLE_MEMORY_MANAGEMENT): a reader
// past its own cache_size takes the least recently used page of any
// connection, which may then allocate a new one. So a reader that scans
// while the writer writes (and the writer, which reads to write) take the
// room of every open connection's cache_size — the checkpointer's too,
// which holds no page — and that sum is what bounds SQLite's page caches.
func TestSQLitePageCachesStayWithinTheirSettingsTogether(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "budget.db"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	fillRows(t, db, 6000) // ~6 MiB: more than every connection's cache together
	for round := range 8 {
		// The writer touches pages of its own (a new table each round)...
		require.NoError(t, db.Write(ctx, func(tx *Tx) error {
			if _, err := tx.Exec(ctx, fmt.Sprintf(`CREATE TABLE w%d (id INTEGER PRIMARY KEY, body TEXT NOT NULL)`, round)); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, fmt.Sprintf(`INSERT INTO w%d SELECT id, body FROM t WHERE id < 1500`, round))
			return err
		}))
		// ...and the reader scans, taking them.
		var n int
		require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM t WHERE body LIKE '%zz%'`).Scan(&n))
	}

	var cached, budget, overOwn int
	for _, m := range SQLiteMemory(ctx) { // every database open in the process
		own := map[string]int{"writer": writerCacheKiB, "checkpointer": checkpointerCacheKiB, "reader": readCacheKiB}[m.Pool] << 10
		if m.Pool == "checkpointer" {
			require.Less(t, m.Cache, 8<<10, "the checkpointer reads no page through its cache (its pager and one page buffer)")
		}
		cached += m.Cache
		budget += own
		overOwn = max(overOwn, m.Cache-own)
	}
	// A connection holds more than its own setting: the budget is shared
	// (what makes each setting count, the checkpointer's too).
	require.Positive(t, overOwn)
	// cache_size in KiB counts a page and its header as SQLite sizes them;
	// CACHE_USED adds a little more per page (PgHdr): 10% is room for it.
	require.LessOrEqual(t, cached, budget+budget/10, "cached %d KiB, settings together %d KiB", cached>>10, budget>>10)
}

// The writer has the page cache of its setting.
func TestSQLiteWriterPageCache(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "sizes.db"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	var writer int
	require.NoError(t, db.Write(ctx, func(tx *Tx) error {
		return tx.QueryRow(ctx, `PRAGMA cache_size`).Scan(&writer)
	}))
	require.Equal(t, -writerCacheKiB, writer)
}

// A write transaction with more dirty pages than the writer's cache holds
// spills them to the WAL before its COMMIT, and commits whole: the rows are
// all there, and a reader saw none of them before the commit.
func TestSQLiteWriteLargerThanTheWritersCacheCommitsWhole(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "spill.db"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	fillRows(t, db, 1)
	const rows = 4000 // ~4 MiB of rows, 8× the writer's cache
	var before int
	require.NoError(t, db.Write(ctx, func(tx *Tx) error {
		for i := 1; i <= rows; i++ {
			if _, err := tx.Exec(ctx, `INSERT INTO t (id, body) VALUES (?, hex(randomblob(500)))`, i); err != nil {
				return err
			}
		}
		return db.QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&before)
	}))
	require.Equal(t, 1, before, "a reader does not see the transaction's rows before its COMMIT")
	var n int
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&n))
	require.Equal(t, rows+1, n)
	var spills int
	for _, m := range memoryOf("spill") {
		if m.Pool == "writer" {
			spills += m.Spills
		}
	}
	require.Positive(t, spills, "the transaction spilled (it is larger than the writer's cache)")
}
