package sqldb_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// openPG opens a schema of the test's own on PostgreSQL with one pooled
// connection (so a connection left inside a transaction would show in the
// next write), with a kv table and a function that raises a given SQLSTATE.
func openPG(t *testing.T, params string) *sqldb.DB {
	t.Helper()
	dsn := testkit.PostgresSchema(t) // skips without PostgreSQL (fails in CI)
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	db, err := sqldb.Open(context.Background(), dsn+sep+"pool_max_conns=1"+params)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	ctx := context.Background()
	_, err = db.Raw().ExecContext(ctx, kvTable)
	require.NoError(t, err)
	_, err = db.Raw().ExecContext(ctx, `CREATE FUNCTION raise_state(code TEXT) RETURNS INT LANGUAGE plpgsql AS
		$$ BEGIN RAISE EXCEPTION 'injected %', code USING ERRCODE = code; END $$`)
	require.NoError(t, err)
	return db
}

func insertKV(ctx context.Context, tx *sqldb.Tx, k string, i int) error {
	_, err := tx.Exec(ctx, `INSERT INTO kv (k, i, v) VALUES (?, ?, 'v')`, k, i)
	return err
}

func kvKeys(t *testing.T, db *sqldb.DB) []string {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT k FROM kv ORDER BY k, i`)
	require.NoError(t, err)
	defer rows.Close()
	var ks []string
	for rows.Next() {
		var k string
		require.NoError(t, rows.Scan(&k))
		ks = append(ks, k)
	}
	require.NoError(t, rows.Err())
	return ks
}

// requireUsable checks the pool's one connection is out of any transaction:
// a write commits and a read sees it.
func requireUsable(t *testing.T, db *sqldb.DB, k string) {
	t.Helper()
	require.NoError(t, db.Write(context.Background(), func(tx *sqldb.Tx) error { return insertKV(context.Background(), tx, k, 0) }))
	require.Contains(t, kvKeys(t, db), k)
}

// BEGIN goes in the same network write as the first statement, whether that
// is an Exec or a query: a write of two statements (prepared already) makes
// two network writes before its COMMIT, not three.
func TestPostgresBeginTravelsWithTheFirstStatement(t *testing.T) {
	db := openPG(t, "")
	ctx := context.Background()
	for round := range 2 { // the first round prepares the statements
		var writes int
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
			w0 := sqldb.NetworkWrites(tx)
			if err := insertKV(ctx, tx, "exec-first", round); err != nil {
				return err
			}
			var n int
			if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM kv WHERE k = ?`, "exec-first").Scan(&n); err != nil {
				return err
			}
			require.Equal(t, round+1, n, "the transaction sees its own insert")
			writes = sqldb.NetworkWrites(tx) - w0
			return nil
		}))
		if round == 1 {
			require.Equal(t, 2, writes)
		}
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
			w0 := sqldb.NetworkWrites(tx)
			var n int
			if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM kv WHERE k = ?`, "query-first").Scan(&n); err != nil {
				return err
			}
			if err := insertKV(ctx, tx, "query-first", n); err != nil {
				return err
			}
			writes = sqldb.NetworkWrites(tx) - w0
			return nil
		}))
		if round == 1 {
			require.Equal(t, 2, writes)
		}
	}
	require.Equal(t, []string{"exec-first", "exec-first", "query-first", "query-first"}, kvKeys(t, db))
	// The statements ran in one transaction each: txid the same within one.
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
		var a, b int64
		require.NoError(t, tx.QueryRow(ctx, `SELECT txid_current() + 0 * ?`, 1).Scan(&a))
		require.NoError(t, tx.QueryRow(ctx, `SELECT txid_current() + 0 * ?`, 2).Scan(&b))
		require.Equal(t, a, b)
		return nil
	}))
}

func sqlState(err error) string {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pg.Code
	}
	return ""
}

// A failing first statement (sent with BEGIN) fails the write and leaves
// the connection out of any transaction; so does a failing later one, and
// what the earlier statements wrote is not kept.
func TestPostgresFailedStatementRollsBackTheWrite(t *testing.T) {
	db := openPG(t, "")
	ctx := context.Background()
	err := db.Write(ctx, func(tx *sqldb.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO missing (k) VALUES (?)`, "x")
		return err
	})
	require.Equal(t, "42P01", sqlState(err), "undefined_table: %v", err)
	requireUsable(t, db, "after-first-exec")

	err = db.Write(ctx, func(tx *sqldb.Tx) error {
		var n int
		return tx.QueryRow(ctx, `SELECT COUNT(*) FROM missing WHERE k = ?`, "x").Scan(&n)
	})
	require.Equal(t, "42P01", sqlState(err), "undefined_table: %v", err)
	requireUsable(t, db, "after-first-query")

	err = db.Write(ctx, func(tx *sqldb.Tx) error {
		if err := insertKV(ctx, tx, "dup", 1); err != nil {
			return err
		}
		return insertKV(ctx, tx, "dup", 1)
	})
	require.True(t, sqldb.IsUniqueViolation(err), "%v", err)
	require.NotContains(t, kvKeys(t, db), "dup")
	requireUsable(t, db, "after-later")

	// fn goes on after a failed statement: the server has rolled the
	// transaction back, and the commit says so.
	err = db.Write(ctx, func(tx *sqldb.Tx) error {
		if err := insertKV(ctx, tx, "swallowed", 1); err != nil {
			return err
		}
		_ = insertKV(ctx, tx, "swallowed", 1)
		return nil
	})
	require.ErrorIs(t, err, pgx.ErrTxCommitRollback)
	require.NotContains(t, kvKeys(t, db), "swallowed")
	requireUsable(t, db, "after-swallowed")
}

// A context that ends before the write, between its statements or during
// one fails the write with the context's error and keeps nothing.
func TestPostgresCancelledWriteKeepsNothing(t *testing.T) {
	db := openPG(t, "")
	ctx := context.Background()

	done, cancel := context.WithCancel(ctx)
	cancel()
	err := db.Write(done, func(tx *sqldb.Tx) error { return insertKV(done, tx, "before", 1) })
	require.ErrorIs(t, err, context.Canceled)

	between, cancel := context.WithCancel(ctx)
	err = db.Write(between, func(tx *sqldb.Tx) error {
		if err := insertKV(between, tx, "between", 1); err != nil {
			return err
		}
		cancel()
		return insertKV(between, tx, "between", 2)
	})
	require.ErrorIs(t, err, context.Canceled)

	// The first statement itself (sent with BEGIN) is interrupted; then a
	// later one.
	for _, first := range []bool{true, false} {
		during, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		err = db.Write(during, func(tx *sqldb.Tx) error {
			if !first {
				if err := insertKV(during, tx, "during", 1); err != nil {
					return err
				}
			}
			var one int
			return tx.QueryRow(during, `SELECT 1 FROM pg_sleep(?)`, 30).Scan(&one)
		})
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded)
	}

	require.Empty(t, kvKeys(t, db))
	requireUsable(t, db, "after")
}

// A serialization failure or a deadlock, in the first statement (sent with
// BEGIN) or a later one, runs fn again in a new transaction; what the failed
// attempt wrote is not kept. Another error is not retried.
func TestPostgresSerializationFailureRetries(t *testing.T) {
	db := openPG(t, "")
	ctx := context.Background()
	for _, c := range []struct {
		name, code string
		first      bool
	}{{"serialization-first", "40001", true}, {"serialization-later", "40001", false}, {"deadlock-later", "40P01", false}} {
		attempts := 0
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
			attempts++
			if !c.first {
				if err := insertKV(ctx, tx, c.name, attempts); err != nil {
					return err
				}
			}
			if attempts == 1 {
				var n int
				return tx.QueryRow(ctx, `SELECT raise_state(?)`, c.code).Scan(&n)
			}
			return insertKV(ctx, tx, c.name, 100+attempts)
		}), c.name)
		require.Equal(t, 2, attempts, c.name)
	}
	var ks []string
	rows, err := db.Query(ctx, `SELECT k || ':' || i FROM kv ORDER BY k, i`)
	require.NoError(t, err)
	for rows.Next() {
		var k string
		require.NoError(t, rows.Scan(&k))
		ks = append(ks, k)
	}
	require.NoError(t, rows.Close())
	require.Equal(t, []string{"deadlock-later:2", "deadlock-later:102", "serialization-first:102", "serialization-later:2", "serialization-later:102"}, ks)

	attempts := 0
	err = db.Write(ctx, func(tx *sqldb.Tx) error {
		attempts++
		var n int
		return tx.QueryRow(ctx, `SELECT raise_state(?)`, "P0001").Scan(&n)
	})
	require.Equal(t, "P0001", sqlState(err))
	require.Equal(t, 1, attempts)
	requireUsable(t, db, "after")
}

// A statement pgx sends with the simple protocol (an Exec without
// arguments) first in a write, and writes that run no statement at all,
// work as before; so does a pool whose pgx mode rules out pipelining.
func TestPostgresWriteShapes(t *testing.T) {
	for _, params := range []string{"", "&default_query_exec_mode=exec"} {
		db := openPG(t, params)
		ctx := context.Background()
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO kv (k, i, v) VALUES ('simple', 1, 'v')`); err != nil {
				return err
			}
			return insertKV(ctx, tx, "simple", 2)
		}))
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return nil }))
		err := db.Write(ctx, func(tx *sqldb.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO kv (k, i, v) VALUES ('simple', 3, 'v')`); err != nil {
				return err
			}
			return errors.New("changed my mind")
		})
		require.EqualError(t, err, "changed my mind")
		rows, err := db.Query(ctx, `SELECT i FROM kv WHERE k = ? ORDER BY i`, "simple")
		require.NoError(t, err)
		var is []int
		for rows.Next() {
			var i int
			require.NoError(t, rows.Scan(&i))
			is = append(is, i)
		}
		require.NoError(t, rows.Close())
		require.Equal(t, []int{1, 2}, is, params)
		requireUsable(t, db, "after")
	}
}
