package outboxtest

import (
	"context"
	"fmt"
	"io/fs"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// PostgresUpgradeDropsUniqueID migrates a PostgreSQL database to just
// before version (the migration that drops the outbox's UNIQUE id; fsys and
// dir as the service's store gives them to sqldb.Migrate), writes five
// events and deletes the first ones as the relay does after their PubAck,
// then runs migrate (the service's store.New). The unpublished rows are
// kept as they were, the next event takes the seq after the highest ever
// taken (also when the relay had emptied the table), no UNIQUE index is
// left on the outbox, and an id written again is a row like any other (the
// stream's duplicate window drops the repeat).
func PostgresUpgradeDropsUniqueID(t *testing.T, fsys fs.FS, dir, version string, migrate func(context.Context, *sqldb.DB) error) {
	b := testkit.Backends()[1]
	for _, pending := range []int{2, 0} {
		t.Run(fmt.Sprintf("pending=%d", pending), func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			testkit.MigrateBefore(t, db, fsys, dir, version)
			var events []outbox.Event
			for i := range 7 {
				events = append(events, outbox.Event{ID: fmt.Sprint("e", i+1), Subject: fmt.Sprint("clinicchat.test.", i+1),
					Msg: wrapperspb.String(fmt.Sprint("payload ", i+1))})
			}
			require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, events[:5]) }))
			require.Equal(t, 1, pgUniqueOutboxIndexes(t, db), "before %s: the UNIQUE index on id", version)
			_, err := db.Exec(ctx, `DELETE FROM outbox WHERE seq <= ?`, 5-pending) // the relay, after the PubAcks
			require.NoError(t, err)
			before := pgOutboxRows(t, db)
			require.Len(t, before, pending)

			require.NoError(t, migrate(ctx, db))
			require.Equal(t, before, pgOutboxRows(t, db), "the unpublished rows, as they were")
			require.Zero(t, pgUniqueOutboxIndexes(t, db), "no UNIQUE index on the outbox")

			repeat := outbox.Event{ID: "e5", Subject: "clinicchat.test.5", Msg: wrapperspb.String("payload 5")}
			require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
				return outbox.AddAll(ctx, tx, []outbox.Event{events[5], repeat})
			}))
			after := pgOutboxRows(t, db)
			require.Len(t, after, pending+2)
			require.Equal(t, int64(6), after[pending].seq, "the seq after the highest ever taken")
			require.Equal(t, "e6", after[pending].id)
			require.Equal(t, "e5", after[pending+1].id, "an id written again is a row of its own")
		})
	}
}

type pgOutboxRow struct {
	seq         int64
	id, subject string
	payload     []byte
	created     int64
}

func pgOutboxRows(t *testing.T, db *sqldb.DB) []pgOutboxRow {
	t.Helper()
	rs, err := db.Query(context.Background(), `SELECT seq, id, subject, payload, created_at FROM outbox ORDER BY seq`)
	require.NoError(t, err)
	defer rs.Close()
	var out []pgOutboxRow
	for rs.Next() {
		var r pgOutboxRow
		require.NoError(t, rs.Scan(&r.seq, &r.id, &r.subject, &r.payload, &r.created))
		out = append(out, r)
	}
	require.NoError(t, rs.Err())
	return out
}

func pgUniqueOutboxIndexes(t *testing.T, db *sqldb.DB) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow(context.Background(), `SELECT COUNT(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
		JOIN pg_namespace s ON s.oid = c.relnamespace
		WHERE s.nspname = current_schema() AND c.relname = 'outbox' AND i.indisunique AND NOT i.indisprimary`).Scan(&n))
	return n
}
