package sqldb

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// The test binary gives SQLite its page-cache buffer before any test opens
// a connection, whatever order the tests run in (openSQLite does it too).
func init() { setupPageCache() }

// SQLite's pages live in the page-cache buffer's slots, each a page and its
// headers (not modernc's 8 KiB size class), and none spills to malloc while
// slots are free: a scan of ~2 MiB of rows while the writer writes.
func TestSQLitePagesLiveInThePageCacheBuffersSlots(t *testing.T) {
	require.NoError(t, pageCacheSetup.err)
	before := SQLitePageCache()
	require.Equal(t, pageCacheSlots, before.Slots)
	require.Greater(t, before.Slot, pageCachePageSize, "a slot holds the page and its headers")
	require.Less(t, before.Slot, pageCachePageSize+1024, "and no more (modernc's size class: 8 KiB)")

	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "slots.db"))
	require.NoError(t, err)
	defer db.Close()
	fillRows(t, db, 2000)
	var n int
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM t WHERE body LIKE '%zz%'`).Scan(&n))

	after := SQLitePageCache()
	require.Greater(t, after.Used, before.Used, "the pages read are in slots: %+v", after)
	require.Greater(t, after.UsedMax, 100)
	require.LessOrEqual(t, after.UsedMax, pageCacheSlots)
	if after.UsedMax < pageCacheSlots-10 {
		require.Equal(t, before.Overflow, after.Overflow, "no page malloc'd while slots were free: %+v", after)
	}
}
