package sqldb

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// A statement's PostgreSQL text is made once, not on every call (an outbox
// INSERT per event); SQLite's is the statement itself.
func TestRebindRewritesAStatementOnce(t *testing.T) {
	q := `INSERT INTO rebind_once (a, b, c) VALUES (?, ?, '?')`
	require.Equal(t, `INSERT INTO rebind_once (a, b, c) VALUES ($1, $2, '?')`, rebind(Postgres, q))
	require.Zero(t, testing.AllocsPerRun(100, func() { _ = rebind(Postgres, q) }), "rewritten again")
	require.Equal(t, q, rebind(SQLite, q))
}

// The cache keeps at most maxRebound statements; the rest are rewritten
// each time, as before.
func TestRebindCacheIsBounded(t *testing.T) {
	for i := range maxRebound + 10 {
		q := fmt.Sprintf(`SELECT %d FROM rebind_bound WHERE a = ?`, i)
		require.Equal(t, fmt.Sprintf(`SELECT %d FROM rebind_bound WHERE a = $1`, i), rebind(Postgres, q))
	}
	rebound.mu.RLock()
	defer rebound.mu.RUnlock()
	require.LessOrEqual(t, len(rebound.m), maxRebound)
}
