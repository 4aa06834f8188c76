package sqldb

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
)

// TestWALSyncsAreTimedPerDatabase: every commit's WAL fsync is counted in
// its own database's clinicchat_sqldb_wal_sync_seconds, whichever of the
// process's databases commits.
func TestWALSyncsAreTimedPerDatabase(t *testing.T) {
	if !registerWALVFS() {
		t.Skip("the WAL VFS is not available")
	}
	ctx := context.Background()
	dir := t.TempDir()
	first, err := Open(ctx, "sqlite:"+filepath.Join(dir, "first-synctest.db"))
	require.NoError(t, err)
	defer first.Close()
	other, err := Open(ctx, "sqlite:"+filepath.Join(dir, "other-synctest.db"))
	require.NoError(t, err)
	defer other.Close()
	for _, db := range []*DB{first, other} {
		require.NoError(t, db.Write(ctx, func(tx *Tx) error {
			_, err := tx.Exec(ctx, `CREATE TABLE t (v INTEGER)`)
			return err
		}))
		before := testutil.CollectAndCount(db.metrics.walSync)
		require.Equal(t, 1, before)
		n0 := histCount(t, db)
		for i := range 3 {
			require.NoError(t, db.Write(ctx, func(tx *Tx) error {
				_, err := tx.Exec(ctx, `INSERT INTO t (v) VALUES (?)`, i)
				return err
			}))
		}
		require.GreaterOrEqual(t, histCount(t, db)-n0, uint64(3), "one WAL sync per commit at least")
	}
	require.Same(t, first.metrics.walSync, walSyncHistogram(walSyncIndex(walPath(filepath.Join(dir, "first-synctest.db")))))
	require.Same(t, other.metrics.walSync, walSyncHistogram(walSyncIndex(walPath(filepath.Join(dir, "other-synctest.db")))))
}

func histCount(t *testing.T, db *DB) uint64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, db.metrics.walSync.Write(&m))
	return m.GetHistogram().GetSampleCount()
}
