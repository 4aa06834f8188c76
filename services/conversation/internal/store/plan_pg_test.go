package store_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// The projection's statements run with their generic plans from the first
// call on PostgreSQL: none of them is planned per call (a custom plan),
// which PostgreSQL otherwise does for the first five runs of each text on
// each connection. One connection, so that pg_prepared_statements (one
// session's) shows every statement the projection prepared.
func TestProjectionPlansAreGeneric(t *testing.T) {
	u, err := url.Parse(testkit.PostgresSchema(t))
	require.NoError(t, err)
	q := u.Query()
	q.Set("pool_max_conns", "1")
	q.Set("group_commit_lanes", "0")
	u.RawQuery = q.Encode()
	ctx := context.Background()
	db, err := sqldb.Open(ctx, u.String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	s, err := store.New(ctx, db)
	require.NoError(t, err)

	t0 := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
	var threads []domain.Conversation
	for _, p := range []string{"pa", "pb", "pc"} {
		threads = append(threads, create(t, s, p, p, t0))
	}
	seq := int64(0)
	for round := range 3 {
		// Each thread two new messages (applyThreads), then one each
		// (applyOnes).
		for _, per := range []int{2, 1} {
			var ms []domain.MessageApplied
			for _, c := range threads {
				for k := range per {
					ms = append(ms, domain.MessageApplied{Practice: c.Practice, ConversationID: c.ID, Seq: seq + int64(k) + 1,
						FromPatient: k%2 == 1, Sender: "users/u1", Time: t0.Add(time.Duration(round) * time.Minute), Preview: "m"})
				}
			}
			seq += int64(per)
			out, err := s.ApplyMessages(ctx, ms, func(domain.MessageApplied, domain.Conversation, []string) []domain.Event { return nil })
			require.NoError(t, err)
			for _, o := range out {
				require.Equal(t, domain.Applied, o)
			}
		}
	}
	rows, err := db.Query(ctx, `SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements
		WHERE statement LIKE '%message_index%' OR statement LIKE '%FOR UPDATE%' OR statement LIKE 'UPDATE conversations SET last_message_time = v.column3%'`)
	require.NoError(t, err)
	defer rows.Close()
	n, saves := 0, 0
	for rows.Next() {
		var stmt string
		var generic, custom int64
		require.NoError(t, rows.Scan(&stmt, &generic, &custom))
		require.Zero(t, custom, "planned per call: %s", stmt)
		n++
		if strings.HasPrefix(stmt, "UPDATE conversations SET last_message_time = v.column3") {
			// The three threads of a batch with two new messages each are
			// updated by one statement of three rows, three times.
			require.Equal(t, 3, strings.Count(stmt, "CAST($")/7, "threads a statement: %q", stmt)
			require.EqualValues(t, 3, generic)
			saves++
		}
	}
	require.NoError(t, rows.Err())
	require.GreaterOrEqual(t, n, 5, "the lock, the threads' read, the index rows, the single messages' rows and update, the threads' update")
	require.Equal(t, 1, saves, "one statement updates a batch's threads")
}
