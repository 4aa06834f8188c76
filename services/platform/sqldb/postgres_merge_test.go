package sqldb

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Held-back INSERTs of one shape that follow one another become one INSERT
// of their rows in order; anything else stays as it is and where it is.
func TestMergeInserts(t *testing.T) {
	one := rebind(Postgres, `INSERT INTO outbox (id, subject) VALUES (?, ?)`)
	two := rebind(Postgres, `INSERT INTO outbox (id, subject) VALUES (?, ?), (?, ?)`)
	upsert := rebind(Postgres, `INSERT INTO outbox (id, subject) VALUES (?, ?) ON CONFLICT DO NOTHING`)
	del := `DELETE FROM outbox WHERE seq = ANY($1)`
	got := mergeInserts([]atCommitStmt{
		{one, []any{"a", "s"}}, {two, []any{"b", "s", "c", "s"}}, {one, []any{"d", "s"}},
		{del, []any{[]int64{1}}},
		{one, []any{"e", "s"}}, {upsert, []any{"f", "s"}}, {one, []any{"g", "s"}}, {one, []any{"h", "s"}},
	})
	require.Equal(t, []atCommitStmt{
		{`INSERT INTO outbox (id, subject) VALUES ($1, $2), ($3, $4), ($5, $6), ($7, $8)`, []any{"a", "s", "b", "s", "c", "s", "d", "s"}},
		{del, []any{[]int64{1}}},
		{one, []any{"e", "s"}},
		{upsert, []any{"f", "s"}},
		{two, []any{"g", "s", "h", "s"}},
	}, got)

	many := make([]atCommitStmt, maxMergedRows+1)
	for i := range many {
		many[i] = atCommitStmt{one, []any{i, i}}
	}
	got = mergeInserts(many)
	require.Len(t, got, 2, "at most maxMergedRows rows per INSERT")
	require.Len(t, got[0].args, 2*maxMergedRows)
	require.Equal(t, one, got[1].q)
	require.Equal(t, []any{maxMergedRows, maxMergedRows}, got[1].args)
}
