// Package outboxtest checks, for a service's tests, the SQLite migration
// that makes the service's outbox again without the UNIQUE index on id
// (issue 10, sqlite12).
package outboxtest

import (
	"context"
	"fmt"
	"io/fs"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// UpgradeKeepsOutbox migrates a SQLite database to just before version
// (fsys and dir as the service's store gives them to sqldb.Migrate), writes
// five events and deletes the first ones as the relay does after their
// PubAck, then runs migrate (the service's store.New). The rows not yet
// published are there after it as they were, in seq order; the next event
// takes the seq after the highest ever taken, also when the table was empty
// (AUTOINCREMENT's counter is carried over); and the outbox has no UNIQUE
// index left.
func UpgradeKeepsOutbox(t *testing.T, fsys fs.FS, dir, version string, migrate func(context.Context, *sqldb.DB) error) {
	for _, pending := range []int{2, 0} {
		t.Run(fmt.Sprintf("pending=%d", pending), func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, testkit.Backends()[0])
			testkit.MigrateBefore(t, db, fsys, dir, version)
			var events []outbox.Event
			for i := range 6 {
				events = append(events, outbox.Event{ID: fmt.Sprint("e", i+1), Subject: fmt.Sprint("clinicchat.test.", i+1),
					Msg: wrapperspb.String(fmt.Sprint("payload ", i+1))})
			}
			require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, events[:5]) }))
			_, err := db.Exec(ctx, `DELETE FROM outbox WHERE seq <= ?`, 5-pending)
			require.NoError(t, err)
			before := rows(t, db)
			require.Len(t, before, pending)

			require.NoError(t, migrate(ctx, db))
			require.Equal(t, before, rows(t, db), "the unpublished rows, as they were")
			unique, err := db.Query(ctx, `SELECT name FROM pragma_index_list('outbox') WHERE "unique"`)
			require.NoError(t, err)
			var names []string
			for unique.Next() {
				var n string
				require.NoError(t, unique.Scan(&n))
				names = append(names, n)
			}
			require.NoError(t, unique.Err())
			unique.Close()
			require.Empty(t, names, "no UNIQUE index on the outbox")

			require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, events[5:]) }))
			after := rows(t, db)
			require.Len(t, after, pending+1)
			require.Equal(t, int64(6), after[pending].seq, "the seq after the highest ever taken")
			require.Equal(t, "e6", after[pending].id)
		})
	}
}

type row struct {
	seq         int64
	id, subject string
	payload     []byte
	created     int64
	traceparent *string
}

func rows(t *testing.T, db *sqldb.DB) []row {
	t.Helper()
	rs, err := db.Query(context.Background(), `SELECT seq, id, subject, payload, created_at, traceparent FROM outbox ORDER BY seq`)
	require.NoError(t, err)
	defer rs.Close()
	var out []row
	for rs.Next() {
		var r row
		require.NoError(t, rs.Scan(&r.seq, &r.id, &r.subject, &r.payload, &r.created, &r.traceparent))
		out = append(out, r)
	}
	require.NoError(t, rs.Err())
	return out
}

// SeqsWithoutAutoincrement checks a SQLite outbox made without
// AUTOINCREMENT (migrate makes the schema on an empty database): the
// writer takes the seqs (outbox.AddAll), so they go on after the relay has
// deleted every row as they did with AUTOINCREMENT, and no commit writes
// the sqlite_sequence row.
func SeqsWithoutAutoincrement(t *testing.T, migrate func(context.Context, *sqldb.DB) error) {
	ctx := context.Background()
	db := testkit.OpenDB(t, testkit.Backends()[0])
	require.NoError(t, migrate(ctx, db))
	var ddl string
	require.NoError(t, db.QueryRow(ctx, `SELECT sql FROM sqlite_schema WHERE name = 'outbox'`).Scan(&ddl))
	require.NotContains(t, strings.ToUpper(ddl), "AUTOINCREMENT")
	var events []outbox.Event
	for i := range 4 {
		events = append(events, outbox.Event{ID: fmt.Sprint("e", i+1), Subject: "clinicchat.test.x", Msg: wrapperspb.String("p")})
	}
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, events[:3]) }))
	_, err := db.Exec(ctx, `DELETE FROM outbox WHERE seq <= ?`, 3) // the relay, after the PubAcks
	require.NoError(t, err)
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, events[3:]) }))
	after := rows(t, db)
	require.Len(t, after, 1)
	require.Equal(t, int64(4), after[0].seq, "the seq after the highest taken, the table emptied meanwhile")
	var n int
	require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM sqlite_schema WHERE name = 'sqlite_sequence'`).Scan(&n))
	if n > 0 {
		require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM sqlite_sequence WHERE name = 'outbox'`).Scan(&n))
		require.Zero(t, n, "no sqlite_sequence row for the outbox")
	}
}
