package store_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// The receipts' batch statement runs with its generic plan
// (plan_cache_mode force_generic_plan). Made from the statistics of a
// table of one row (a fresh database before autovacuum's first ANALYZE of a
// busy table), that plan read the practice's every message per lookup:
// messages_by_request and the primary key cost the same there, and the
// planner took messages_by_request, whose only usable column is practice
// (in the distributed bench up to 8,954 rows removed by the filter per
// lookup). The scan of each receipt's range, the lock of each message it
// changes and the UPDATE's lookup of it must use the primary key.
func TestReceiptPlansUseThePrimaryKey(t *testing.T) {
	ctx := context.Background()
	_, db := openStore(t, testkit.Backends()[1]) // PostgreSQL
	raw := db.Raw()
	const insert = `INSERT INTO messages (practice, conversation_id, seq, patient_id, sender, sender_role, from_patient, text,
		extras, sensitive, status, create_time, request_id, content_hash)
		SELECT $1, 'c' || (i % 8), i, 'p', 's' || (i % 8), 'dentist', false, 'hi', '', false, 1, 0, 'r' || i, 'h'
		FROM generate_series(1, $2::int) i`
	_, err := raw.ExecContext(ctx, insert, "demo", 1)
	require.NoError(t, err)
	_, err = raw.ExecContext(ctx, `ANALYZE messages`)
	require.NoError(t, err)
	_, err = raw.ExecContext(ctx, insert, "p1", 3000)
	require.NoError(t, err)

	conn, err := raw.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.ExecContext(ctx, `SET plan_cache_mode = force_generic_plan`)
	require.NoError(t, err)
	for i, read := range []bool{false, true} {
		name := []string{"delivered", "read"}[i]
		_, err = conn.ExecContext(ctx, `PREPARE `+name+`(text[], text[], boolean[], bigint[], bigint[], text[]) AS `+store.AdvanceSQL(read))
		require.NoError(t, err)
		rows, err := conn.QueryContext(ctx, `EXPLAIN EXECUTE `+name+`('{p1}', '{c1}', '{f}', '{100}', '{5}', '{x}')`)
		require.NoError(t, err)
		var plan []string
		for rows.Next() {
			var line string
			require.NoError(t, rows.Scan(&line))
			plan = append(plan, line)
		}
		require.NoError(t, rows.Err())
		require.NoError(t, rows.Close())
		text := strings.Join(plan, "\n")
		// m_1 is the range's scan (first), m_2 the lock (locked), m the
		// UPDATE's.
		for _, alias := range []string{"on messages m_1 ", "on messages m_2 ", "on messages m "} {
			found := false
			for _, line := range plan {
				if strings.Contains(line, "Scan") && strings.Contains(line, alias) {
					found = true
					require.Contains(t, line, "messages_pkey", "%s: %s\n%s", name, alias, text)
				}
			}
			require.True(t, found, "%s: no %q in the plan:\n%s", name, alias, text)
		}
	}
}
