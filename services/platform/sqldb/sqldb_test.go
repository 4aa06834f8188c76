package sqldb_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

func TestWriteGroupCommitKeepsEachWriteAtomic(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			_, err := db.Exec(ctx, `CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)`)
			require.NoError(t, err)

			commits := make(chan struct{}, 1000)
			db.OnCommit(func() {
				select {
				case commits <- struct{}{}:
				default:
				}
			})
			errBoom := errors.New("boom")
			var wg sync.WaitGroup
			results := make([]error, 200)
			for i := range 200 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					results[i] = db.Write(ctx, func(tx *sqldb.Tx) error {
						if _, err := tx.Exec(ctx, `INSERT INTO kv (k, v) VALUES (?, ?)`, fmt.Sprintf("k%d", i), i); err != nil {
							return err
						}
						if i%10 == 0 {
							return errBoom // this write must leave nothing behind
						}
						return nil
					})
				}()
			}
			wg.Wait()
			for i, err := range results {
				if i%10 == 0 {
					require.ErrorIs(t, err, errBoom)
				} else {
					require.NoError(t, err)
				}
			}
			var n int
			require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM kv`).Scan(&n))
			require.Equal(t, 180, n)
			require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM kv WHERE v % 10 = 0`).Scan(&n))
			require.Zero(t, n)
			require.NotEmpty(t, commits, "OnCommit hooks run")
		})
	}
}

func TestRebindSkipsQuotedQuestionMarks(t *testing.T) {
	b := testkit.Backends()[1]
	db := testkit.OpenDB(t, b)
	require.Equal(t, `SELECT '?' , $1, $2`, db.Rebind(`SELECT '?' , ?, ?`))
}

func TestMigrateIsIdempotent(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			fsys := testFS{"m/" + db.Dialect().String() + "/0001_a.sql": "CREATE TABLE a (x BIGINT); CREATE TABLE b (y BIGINT)",
				"m/" + db.Dialect().String() + "/0002_b.sql": "ALTER TABLE a ADD COLUMN z BIGINT"}
			require.NoError(t, sqldb.Migrate(ctx, db, fsys.FS(), "m"))
			require.NoError(t, sqldb.Migrate(ctx, db, fsys.FS(), "m"))
			var n int
			require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&n))
			require.Equal(t, 2, n)
			_, err := db.Exec(ctx, `INSERT INTO a (x, z) VALUES (1, 2)`)
			require.NoError(t, err)
		})
	}
}

// OnSignal hooks run once per committed write that signalled their topic,
// never for a write that failed (on SQLite, rolled back inside a group
// commit that others committed).
func TestSignalRunsOnlyForCommittedWritesThatSignalled(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			_, err := db.Exec(ctx, `CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)`)
			require.NoError(t, err)
			var mu sync.Mutex
			fired := 0
			db.OnSignal("kv", func() { mu.Lock(); fired++; mu.Unlock() })

			errBoom := errors.New("boom")
			var wg sync.WaitGroup
			for i := range 50 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_ = db.Write(ctx, func(tx *sqldb.Tx) error {
						if _, err := tx.Exec(ctx, `INSERT INTO kv (k, v) VALUES (?, ?)`, fmt.Sprintf("k%d", i), i); err != nil {
							return err
						}
						if i%2 == 0 {
							tx.Signal("kv")
						}
						if i%5 == 0 {
							return errBoom
						}
						return nil
					})
				}()
			}
			wg.Wait()
			mu.Lock()
			defer mu.Unlock()
			require.Positive(t, fired, "signalled commits ran the hook")
			// Group commits (both backends) run the hook at most once per
			// signalled write: at most the 20 even writes that were not also
			// multiples of 5.
			require.LessOrEqual(t, fired, 20, "group commits run the hook at most once per signalled write")
			// A write without a signal runs no hook.
			before := fired
			mu.Unlock()
			_, err = db.Exec(ctx, `INSERT INTO kv (k, v) VALUES ('quiet', 1)`)
			require.NoError(t, err)
			// Nor does a signalled write that fails.
			require.ErrorIs(t, db.Write(ctx, func(tx *sqldb.Tx) error { tx.Signal("kv"); return errBoom }), errBoom)
			mu.Lock()
			require.Equal(t, before, fired)
		})
	}
}

// On SQLite a caller that gives up while its write runs does not interrupt
// the shared connection: its write and the others in the batch commit.
func TestSQLiteWriteIgnoresCancellationOnceRunning(t *testing.T) {
	ctx := context.Background()
	db := testkit.OpenDB(t, testkit.Backends()[0])
	require.Equal(t, sqldb.SQLite, db.Dialect())
	_, err := db.Exec(ctx, `CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)`)
	require.NoError(t, err)
	var wg sync.WaitGroup
	results := make([]error, 50)
	for i := range results {
		wg.Go(func() {
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			results[i] = db.Write(cctx, func(tx *sqldb.Tx) error {
				if i%2 == 0 {
					cancel() // the caller gives up mid-write
				}
				_, err := tx.Exec(cctx, `INSERT INTO kv (k, v) VALUES (?, ?)`, fmt.Sprintf("k%d", i), i)
				return err
			})
		})
	}
	wg.Wait()
	for i, err := range results {
		require.NoError(t, err, i)
	}
	var n int
	require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM kv`).Scan(&n))
	require.Equal(t, len(results), n)
}

// pool_max_conns in a postgres:// DSN sizes the pool (deploy/local/up keeps
// several processes under one server's max_connections) and never reaches
// the server, which would refuse it as an unknown setting.
func TestPostgresPoolMaxConns(t *testing.T) {
	dsn := testkit.PostgresSchema(t) // skips without PostgreSQL (fails in CI)
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	db, err := sqldb.Open(context.Background(), dsn+sep+"pool_max_conns=3")
	require.NoError(t, err)
	defer db.Close()
	var one int
	require.NoError(t, db.QueryRow(context.Background(), `SELECT 1`).Scan(&one))
	require.Equal(t, 1, one)
	_, err = sqldb.Open(context.Background(), dsn+sep+"pool_max_conns=lots")
	require.ErrorContains(t, err, `pool_max_conns="lots"`)
}

// SQLite's read connections have a small page cache each (outside the Go
// heap, one per pooled connection), the writer a quarter of SQLite's
// default (sqlite_memory_test.go: what the settings bound together).
func TestSQLiteReadConnectionsHaveSmallPageCache(t *testing.T) {
	ctx := context.Background()
	db := testkit.OpenDB(t, testkit.Backends()[0])
	require.Equal(t, sqldb.SQLite, db.Dialect())
	// Hold several read connections at once, so more than one is asked.
	var conns []*sql.Conn
	for range 3 {
		c, err := db.Raw().Conn(ctx)
		require.NoError(t, err)
		conns = append(conns, c)
	}
	for _, c := range conns {
		var size int
		require.NoError(t, c.QueryRowContext(ctx, `PRAGMA cache_size`).Scan(&size))
		require.Equal(t, -128, size, "KiB, as a negative number")
		require.NoError(t, c.Close())
	}
	var writer int
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
		return tx.QueryRow(ctx, `PRAGMA cache_size`).Scan(&writer)
	}))
	require.Equal(t, -512, writer, "KiB: a quarter of SQLite's default")
}
