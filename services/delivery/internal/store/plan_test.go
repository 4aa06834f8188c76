package store_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// raiseMarks looks up each receipt's thread's last seq once: SQLite once
// flattened the subquery that computes it into the INSERT's SELECT and
// searched messages three times per receipt (EXPLAIN QUERY PLAN: one
// "SEARCH messages" per evaluation site).
func TestRaiseMarksSearchesTheLastSeqOnce(t *testing.T) {
	ctx := context.Background()
	_, db := openStore(t, testkit.Backends()[0]) // SQLite
	for _, n := range []int{1, 2, 16} {
		args := make([]any, 0, 5*n)
		for range n {
			args = append(args, "p1", "c1", false, int64(1), 0)
		}
		rows, err := db.Raw().QueryContext(ctx, `EXPLAIN QUERY PLAN `+store.RaiseMarksSQL(n), args...)
		require.NoError(t, err)
		var plan []string
		for rows.Next() {
			var id, parent, notUsed int
			var detail string
			require.NoError(t, rows.Scan(&id, &parent, &notUsed, &detail))
			plan = append(plan, detail)
		}
		require.NoError(t, rows.Err())
		require.NoError(t, rows.Close())
		searches := 0
		for _, d := range plan {
			if strings.HasPrefix(d, "SEARCH messages") {
				searches++
			}
		}
		require.Equal(t, 1, searches, "n=%d plan:\n%s", n, strings.Join(plan, "\n"))
	}
}
