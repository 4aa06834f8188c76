package sqldb

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// Writes queued while a batch runs join it before its commit: one commit for
// all, the first write (run without a savepoint, alone when it started) kept,
// a failing joiner undone alone.
func TestQueuedWritesJoinTheRunningBatch(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "t.db"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	_, err = db.Exec(ctx, `CREATE TABLE kv (k TEXT PRIMARY KEY)`)
	require.NoError(t, err)
	var commits atomic.Int64
	db.OnCommit(func() { commits.Add(1) })

	insert := func(k string) func(tx *Tx) error {
		return func(tx *Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO kv (k) VALUES (?)`, k)
			return err
		}
	}
	boom := errors.New("boom")
	joined := make(chan error, 2)
	err = db.Write(ctx, func(tx *Tx) error {
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
