package store_test

import (
	"context"
	"io/fs"
	"testing"
	"testing/fstest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/conversation/internal/store"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store/migrations"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// A database made before needs reply existed gets awaiting_reply_since for
// threads whose patient wrote last (at their last message's time).
func TestUpgradeBackfillsNeedsReply(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			old := fstest.MapFS{}
			for _, d := range []string{"sqlite", "postgres"} {
				body, err := fs.ReadFile(migrations.FS, d+"/0001_init.sql")
				require.NoError(t, err)
				old[d+"/0001_init.sql"] = &fstest.MapFile{Data: body}
			}
			require.NoError(t, sqldb.Migrate(ctx, db, old, "."))
			t0 := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
			require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
				for _, c := range []struct {
					id          string
					fromPatient bool
				}{{"waiting", true}, {"answered", false}} {
					if _, err := tx.Exec(ctx, `INSERT INTO conversations (practice, id, patient_id, patient_display_name, patient_name_key,
						state, create_time, last_message_time, last_message_seq, last_activity) VALUES (?, ?, ?, ?, ?, 1, ?, ?, 1, ?)`,
						"p1", c.id, "pat-"+c.id, "X", "x", sqldb.Micros(t0), sqldb.Micros(t0.Add(time.Hour)), sqldb.Micros(t0.Add(time.Hour))); err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `INSERT INTO message_index (practice, conversation_id, seq, from_patient) VALUES (?, ?, 1, ?)`,
						"p1", c.id, c.fromPatient); err != nil {
						return err
					}
				}
				return nil
			}))
			s, err := store.New(ctx, db)
			require.NoError(t, err)
			c, err := s.Get(ctx, "p1", "waiting", staff)
			require.NoError(t, err)
			require.True(t, t0.Add(time.Hour).Equal(c.AwaitingReplySince))
			c, err = s.Get(ctx, "p1", "answered", staff)
			require.NoError(t, err)
			require.True(t, c.AwaitingReplySince.IsZero())
		})
	}
}
