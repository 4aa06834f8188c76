package store_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store/migrations"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// Threads stored before conversations_awaiting became partial (0007) are
// listed as awaiting a reply after it exactly when they were before, in
// the same order, and leave and join the list as messages arrive.
func TestUpgradeKeepsAwaitingList(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			testkit.MigrateBefore(t, db, migrations.FS, ".", "0007")
			t0 := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
			// awaiting since (minutes after t0; 0: answered), seq 1 of each.
			threads := map[string]int{"w2": 2, "a1": 0, "w1": 1, "a2": 0, "w3": 3}
			require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
				for id, since := range threads {
					var awaiting int64
					if since > 0 {
						awaiting = sqldb.Micros(t0.Add(time.Duration(since) * time.Minute))
					}
					if _, err := tx.Exec(ctx, `INSERT INTO conversations (practice, id, patient_id, patient_display_name, patient_name_key,
						state, create_time, last_message_time, last_message_seq, last_activity, awaiting_reply_since) VALUES (?, ?, ?, ?, ?, 1, ?, ?, 1, ?, ?)`,
						"p1", id, "pa-"+id, "X", "x", sqldb.Micros(t0), sqldb.Micros(t0.Add(4*time.Minute)), sqldb.Micros(t0.Add(4*time.Minute)),
						awaiting); err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `INSERT INTO message_index (practice, conversation_id, seq, from_patient, create_time, ordinal)
						VALUES (?, ?, 1, ?, ?, 1)`, "p1", id, since > 0, awaiting); err != nil {
						return err
					}
				}
				return nil
			}))
			s, err := store.New(ctx, db)
			require.NoError(t, err)
			awaiting := func() []string {
				list, _, err := s.List(ctx, domain.ListQuery{Practice: "p1", Viewer: staff, AwaitingReply: true, Limit: 10})
				require.NoError(t, err)
				var ids []string
				for _, c := range list {
					ids = append(ids, c.ID)
				}
				return ids
			}
			require.Equal(t, []string{"w1", "w2", "w3"}, awaiting())

			c, err := s.Get(ctx, "p1", "w2", staff)
			require.NoError(t, err)
			require.True(t, apply(t, s, c, 2, false, t0.Add(5*time.Minute)), "staff answers w2")
			c, err = s.Get(ctx, "p1", "a1", staff)
			require.NoError(t, err)
			require.True(t, apply(t, s, c, 2, true, t0.Add(6*time.Minute)), "the patient writes in a1")
			c, err = s.Get(ctx, "p1", "a2", staff)
			require.NoError(t, err)
			require.True(t, apply(t, s, c, 2, false, t0.Add(7*time.Minute)), "staff writes again in a2")
			c, err = s.Get(ctx, "p1", "w1", staff)
			require.NoError(t, err)
			require.True(t, apply(t, s, c, 2, true, t0.Add(8*time.Minute)), "the patient writes again in w1: still since minute 1")
			require.Equal(t, []string{"w1", "w3", "a1"}, awaiting())
		})
	}
}

// The needs-reply list reads conversations_awaiting on SQLite (the query
// repeats the partial index's condition), in its order: no table scan, and
// no sort but the id tie-break's among equal times (as with the full index).
func TestAwaitingListQueryPlan(t *testing.T) {
	ctx := context.Background()
	db := testkit.OpenDB(t, testkit.Backends()[0])
	_, err := store.New(ctx, db)
	require.NoError(t, err)
	for _, q := range []string{
		`SELECT c.id FROM conversations c LEFT JOIN user_state u ON u.practice = c.practice AND u.conversation_id = c.id AND u.user_name = ?
			WHERE c.practice = ? AND c.state = ? AND c.awaiting_reply_since > 0 ORDER BY c.awaiting_reply_since ASC, c.id ASC LIMIT ?`,
		`SELECT c.id FROM conversations c LEFT JOIN user_state u ON u.practice = c.practice AND u.conversation_id = c.id AND u.user_name = ?
			WHERE c.practice = ? AND c.state = ? AND c.awaiting_reply_since > 0
			AND (c.awaiting_reply_since > ? OR (c.awaiting_reply_since = ? AND c.id > ?)) ORDER BY c.awaiting_reply_since ASC, c.id ASC LIMIT ?`,
	} {
		all := queryPlan(ctx, t, db, q)
		require.Contains(t, all, "SEARCH c USING INDEX conversations_awaiting (practice=? AND state=?", q)
		require.NotContains(t, all, "SCAN c", q)
		require.NotContains(t, all, "TEMP B-TREE FOR ORDER BY", q)
	}
}

// queryPlan is SQLite's EXPLAIN QUERY PLAN of q (every ? bound to 1), its
// steps joined by "; ".
func queryPlan(ctx context.Context, t *testing.T, db *sqldb.DB, q string) string {
	t.Helper()
	args := make([]any, strings.Count(q, "?"))
	for i := range args {
		args[i] = 1
	}
	rows, err := db.Query(ctx, `EXPLAIN QUERY PLAN `+q, args...)
	require.NoError(t, err)
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		require.NoError(t, rows.Scan(&id, &parent, &unused, &detail))
		plan = append(plan, detail)
	}
	require.NoError(t, rows.Err())
	return strings.Join(plan, "; ")
}
