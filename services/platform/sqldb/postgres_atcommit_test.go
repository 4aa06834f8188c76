package sqldb_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// insertKVAtCommit inserts k with i = how many rows of k the statement sees
// when it runs, so that the order of statements shows in the rows.
func insertKVAtCommit(ctx context.Context, tx *sqldb.Tx, k string) error {
	return tx.ExecAtCommit(ctx, `INSERT INTO kv (k, i, v) SELECT ?, COUNT(*), 'at-commit' FROM kv WHERE k = ?`, k, k)
}

func kvRows(t *testing.T, db *sqldb.DB, k string) []string {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT i || ':' || v FROM kv WHERE k = ? ORDER BY i`, k)
	require.NoError(t, err)
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		require.NoError(t, rows.Scan(&s))
		out = append(out, s)
	}
	require.NoError(t, rows.Err())
	return out
}

// A statement held back by ExecAtCommit goes with COMMIT: a write of one
// statement and one held back makes two network writes where it made three,
// the held-back one runs after every other statement (it sees them), and a
// write of held-back statements alone makes one network write (no BEGIN or
// COMMIT) and keeps all of them.
func TestPostgresExecAtCommitGoesWithCommit(t *testing.T) {
	db := openPG(t, "")
	ctx := context.Background()
	for round := range 2 { // the first round prepares the statements
		k := []string{"with-one", "with-one-again"}[round]
		var writes func() int
		var w0 int
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
			writes, w0 = sqldb.WriteCounter(tx), sqldb.NetworkWrites(tx)
			if err := insertKVAtCommit(ctx, tx, k); err != nil {
				return err
			}
			if err := insertKV(ctx, tx, k, 10); err != nil {
				return err
			}
			// The held-back statement has not run yet.
			var n int
			if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM kv WHERE k = ?`, k).Scan(&n); err != nil {
				return err
			}
			require.Equal(t, 1, n)
			return nil
		}))
		n := writes() - w0 // before kvRows: the pool's one connection
		require.Equal(t, []string{"1:at-commit", "10:v"}, kvRows(t, db, k))
		if round == 1 {
			require.Equal(t, 3, n, "BEGIN with the insert, the count, the held-back insert with COMMIT")
		}

		k = []string{"alone", "alone-again"}[round]
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
			writes, w0 = sqldb.WriteCounter(tx), sqldb.NetworkWrites(tx)
			for range 3 {
				if err := insertKVAtCommit(ctx, tx, k); err != nil {
					return err
				}
			}
			return nil
		}))
		n = writes() - w0
		require.Equal(t, []string{"0:at-commit", "1:at-commit", "2:at-commit"}, kvRows(t, db, k), "in the order of the calls")
		if round == 1 {
			require.Equal(t, 1, n)
		}
	}
	requireUsable(t, db, "after")
}

// A held-back statement that fails fails the write, whatever ran before it,
// and nothing of the write is kept: with other statements (BEGIN sent), and
// alone, where the held-back statements before it are rolled back with it
// (one implicit transaction). The connection is left out of any
// transaction.
func TestPostgresExecAtCommitFailureKeepsNothing(t *testing.T) {
	db := openPG(t, "")
	ctx := context.Background()
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return insertKV(ctx, tx, "taken", 0) }))

	for _, withOthers := range []bool{true, false} {
		err := db.Write(ctx, func(tx *sqldb.Tx) error {
			if withOthers {
				if err := insertKV(ctx, tx, "before", 1); err != nil {
					return err
				}
			}
			if err := tx.ExecAtCommit(ctx, `INSERT INTO kv (k, i, v) VALUES (?, ?, 'v')`, "first", 1); err != nil {
				return err
			}
			return tx.ExecAtCommit(ctx, `INSERT INTO kv (k, i, v) VALUES (?, ?, 'v')`, "taken", 0)
		})
		require.True(t, sqldb.IsUniqueViolation(err), "%v", err)
		require.Equal(t, []string{"taken"}, kvKeys(t, db))
		requireUsable(t, db, "usable")
		_, err = db.Raw().ExecContext(ctx, `DELETE FROM kv WHERE k = 'usable'`)
		require.NoError(t, err)
	}

	// fn swallowed a failed statement: the held-back one fails in the
	// aborted transaction.
	err := db.Write(ctx, func(tx *sqldb.Tx) error {
		_ = insertKV(ctx, tx, "taken", 0)
		return tx.ExecAtCommit(ctx, `INSERT INTO kv (k, i, v) VALUES (?, ?, 'v')`, "swallowed", 1)
	})
	require.Error(t, err)
	require.Equal(t, []string{"taken"}, kvKeys(t, db))
	requireUsable(t, db, "after-swallowed")

	// fn fails after holding a statement back: it never goes.
	err = db.Write(ctx, func(tx *sqldb.Tx) error {
		if err := tx.ExecAtCommit(ctx, `INSERT INTO kv (k, i, v) VALUES (?, ?, 'v')`, "abandoned", 1); err != nil {
			return err
		}
		return errors.New("changed my mind")
	})
	require.EqualError(t, err, "changed my mind")
	require.NotContains(t, kvKeys(t, db), "abandoned")
}

// A serialization failure in a held-back statement runs fn again, as one in
// any statement does; the failed attempt's rows are not kept.
func TestPostgresExecAtCommitRetries(t *testing.T) {
	db := openPG(t, "")
	ctx := context.Background()
	for _, withOthers := range []bool{true, false} {
		attempts := 0
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
			attempts++
			if withOthers {
				if err := insertKV(ctx, tx, "retry", attempts); err != nil {
					return err
				}
			}
			if attempts == 1 {
				if err := tx.ExecAtCommit(ctx, `INSERT INTO kv (k, i, v) VALUES (?, ?, 'v')`, "retry-held", attempts); err != nil {
					return err
				}
				return tx.ExecAtCommit(ctx, `SELECT raise_state(?)`, "40001")
			}
			return tx.ExecAtCommit(ctx, `INSERT INTO kv (k, i, v) VALUES (?, ?, 'v')`, "retry-held", attempts)
		}))
		require.Equal(t, 2, attempts)
		want := []string{"2:v"}
		require.Equal(t, want, kvRows(t, db, "retry-held"))
		if withOthers {
			require.Equal(t, want, kvRows(t, db, "retry"))
		}
		_, err := db.Raw().ExecContext(ctx, `DELETE FROM kv`)
		require.NoError(t, err)
	}
}

// A context that ends before the commit: the held-back statements never
// run, and the write fails with the context's error.
func TestPostgresExecAtCommitCancelled(t *testing.T) {
	db := openPG(t, "")
	ctx := context.Background()
	for _, withOthers := range []bool{true, false} {
		c, cancel := context.WithCancel(ctx)
		err := db.Write(c, func(tx *sqldb.Tx) error {
			if withOthers {
				if err := insertKV(c, tx, "cancelled", 1); err != nil {
					return err
				}
			}
			if err := tx.ExecAtCommit(c, `INSERT INTO kv (k, i, v) VALUES (?, ?, 'v')`, "cancelled-held", 1); err != nil {
				return err
			}
			cancel()
			return nil
		})
		require.ErrorIs(t, err, context.Canceled)
		require.Empty(t, kvKeys(t, db))
		requireUsable(t, db, "after")
		_, err = db.Raw().ExecContext(ctx, `DELETE FROM kv`)
		require.NoError(t, err)
	}
}

// Where statements are not held back (SQLite, and PostgreSQL with BEGIN on
// its own) ExecAtCommit is Exec: it runs at once, in the transaction.
func TestExecAtCommitElsewhereIsExec(t *testing.T) {
	ctx := context.Background()
	check := func(t *testing.T, db *sqldb.DB) {
		_, err := db.Exec(ctx, kvTable)
		require.NoError(t, err)
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
			if err := insertKVAtCommit(ctx, tx, "now"); err != nil {
				return err
			}
			return insertKV(ctx, tx, "now", 10)
		}))
		require.Equal(t, []string{"0:at-commit", "10:v"}, kvRows(t, db, "now"))
		err = db.Write(ctx, func(tx *sqldb.Tx) error {
			return tx.ExecAtCommit(ctx, `INSERT INTO kv (k, i, v) VALUES (?, ?, 'v')`, "now", 10)
		})
		require.True(t, sqldb.IsUniqueViolation(err), "%v", err)
	}
	t.Run("sqlite", func(t *testing.T) { check(t, testkit.OpenDB(t, testkit.Backends()[0])) })
	t.Run("postgres-begin-alone", func(t *testing.T) {
		db := openPG(t, "&default_query_exec_mode=exec")
		_, err := db.Raw().ExecContext(ctx, `DROP TABLE kv`)
		require.NoError(t, err)
		check(t, db)
	})
}

// The arguments of the statements held back for COMMIT are encoded into a
// buffer kept from one commit to the next: a commit of a large value no
// longer regrows pgx's parameter buffer and write buffer from 256 B and
// 1 KiB (twice the value's size allocated per commit; now once, for the
// one batch pgconn builds). Every argument arrives as
// it was given: bytes, text, a number, NULL.
func TestPostgresAtCommitArgumentsInAKeptBuffer(t *testing.T) {
	db := openPG(t, "")
	ctx := context.Background()
	_, err := db.Exec(ctx, `CREATE TABLE blobs (k TEXT PRIMARY KEY, n BIGINT NOT NULL, b BYTEA NOT NULL, note TEXT)`)
	require.NoError(t, err)
	const size = 256 << 10
	blob := bytes.Repeat([]byte{0, 1, 2, 0xff}, size/4)
	write := func(k string) {
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
			return tx.ExecAtCommit(ctx, `INSERT INTO blobs (k, n, b, note) VALUES (?, ?, ?, ?), (?, ?, ?, ?)`,
				k, int64(len(k)), blob, nil, k+"-2", 2, blob[:3], "note")
		}))
	}
	write("warm") // prepares the statement
	const n = 20
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	for i := range n {
		write(fmt.Sprint("k", i))
	}
	runtime.ReadMemStats(&m1)
	perCommit := (m1.TotalAlloc - m0.TotalAlloc) / n
	if !testkit.RaceEnabled {
		require.Less(t, perCommit, uint64(3*size/2), "bytes allocated per commit of a %d-byte value", size)
	}

	var got []byte
	var num int64
	var note sql.NullString
	require.NoError(t, db.QueryRow(ctx, `SELECT n, b, note FROM blobs WHERE k = 'k7'`).Scan(&num, &got, &note))
	require.Equal(t, int64(2), num)
	require.Equal(t, blob, got)
	require.False(t, note.Valid)
	require.NoError(t, db.QueryRow(ctx, `SELECT n, b, note FROM blobs WHERE k = 'k7-2'`).Scan(&num, &got, &note))
	require.Equal(t, []any{int64(2), blob[:3], "note"}, []any{num, got, note.String})
}
