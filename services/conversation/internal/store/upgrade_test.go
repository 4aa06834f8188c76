package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
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
			testkit.MigrateBefore(t, db, migrations.FS, ".", "0002")
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

// The projected messages of a database made before message_index was keyed
// by side (0005) still count as unread and for needs reply, and replays of
// them are still refused.
func TestUpgradeKeepsMessageIndex(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			testkit.MigrateBefore(t, db, migrations.FS, ".", "0005")
			t0 := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
			require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO conversations (practice, id, patient_id, patient_display_name, patient_name_key,
					state, create_time, last_message_time, last_message_seq, last_activity, awaiting_reply_since) VALUES (?, ?, ?, ?, ?, 1, ?, ?, 3, ?, ?)`,
					"p1", "c1", "pa", "X", "x", sqldb.Micros(t0), sqldb.Micros(t0.Add(3*time.Minute)), sqldb.Micros(t0.Add(3*time.Minute)),
					sqldb.Micros(t0.Add(2*time.Minute))); err != nil {
					return err
				}
				// staff wrote 1, the patient 2 and 3.
				for seq, fromPatient := range map[int64]bool{1: false, 2: true, 3: true} {
					if _, err := tx.Exec(ctx, `INSERT INTO message_index (practice, conversation_id, seq, from_patient, create_time) VALUES (?, ?, ?, ?, ?)`,
						"p1", "c1", seq, fromPatient, sqldb.Micros(t0.Add(time.Duration(seq)*time.Minute))); err != nil {
						return err
					}
				}
				return nil
			}))
			s, err := store.New(ctx, db)
			require.NoError(t, err)
			c, err := s.Get(ctx, "p1", "c1", staff)
			require.NoError(t, err)
			require.Equal(t, 2, c.UnreadCount)
			require.True(t, t0.Add(2*time.Minute).Equal(c.AwaitingReplySince))
			c, err = s.Get(ctx, "p1", "c1", patient)
			require.NoError(t, err)
			require.Equal(t, 1, c.UnreadCount)

			require.False(t, apply(t, s, c, 3, true, t0.Add(3*time.Minute)), "a replay of a message projected before the upgrade")
			require.True(t, apply(t, s, c, 4, false, t0.Add(4*time.Minute)))
			c, err = s.Get(ctx, "p1", "c1", staff)
			require.NoError(t, err)
			require.True(t, c.AwaitingReplySince.IsZero(), "staff answered")
		})
	}
}

// A database at 0005 (message_index without ordinals) gets every row's
// ordinal in its side (0006), so unread counts stay what the scan gave, and
// messages projected after the upgrade, in order or not, number on from them.
func TestUpgradeNumbersMessageIndex(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			testkit.MigrateBefore(t, db, migrations.FS, ".", "0006")
			t0 := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
			// Two threads: staff wrote 1, 2, 5, 7 of c1, the patient 3, 4, 8
			// (6 not projected yet); c2 holds 40 patient messages.
			fromPatient := map[string]map[int64]bool{"c1": {1: false, 2: false, 3: true, 4: true, 5: false, 7: false, 8: true}, "c2": {}}
			for seq := int64(1); seq <= 40; seq++ {
				fromPatient["c2"][seq] = true
			}
			require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
				for id, msgs := range fromPatient {
					last := int64(len(msgs))
					if id == "c1" {
						last = 8
					}
					if _, err := tx.Exec(ctx, `INSERT INTO conversations (practice, id, patient_id, patient_display_name, patient_name_key,
						state, create_time, last_message_time, last_message_seq, last_activity) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?)`,
						"p1", id, "pa-"+id, "X", "x", sqldb.Micros(t0), sqldb.Micros(t0), last, sqldb.Micros(t0)); err != nil {
						return err
					}
					for seq, p := range msgs {
						if _, err := tx.Exec(ctx, `INSERT INTO message_index (practice, conversation_id, seq, from_patient, create_time)
							VALUES (?, ?, ?, ?, ?)`, "p1", id, seq, p, sqldb.Micros(t0)); err != nil {
							return err
						}
					}
				}
				return nil
			}))
			s, err := store.New(ctx, db)
			require.NoError(t, err)
			requireOrdinals(t, db)
			for _, id := range []string{"c1", "c2"} {
				for read := int64(0); read <= 41; read++ {
					for _, v := range []domain.Viewer{staff, {Principal: "patients/pa-" + id, IsPatient: true}} {
						setRead(t, db, id, v.Principal, read)
						c, err := s.Get(ctx, "p1", id, v)
						require.NoError(t, err)
						require.Equal(t, countUnread(t, db, id, !v.IsPatient, read), c.UnreadCount, "%s %s read %d", id, v.Principal, read)
					}
				}
			}
			c, err := s.Get(ctx, "p1", "c1", staff)
			require.NoError(t, err)
			require.True(t, apply(t, s, c, 6, true, t0), "out of order, after the upgrade")
			require.True(t, apply(t, s, c, 9, true, t0))
			requireOrdinals(t, db)
			setRead(t, db, "c1", staff.Principal, 4)
			c, err = s.Get(ctx, "p1", "c1", staff)
			require.NoError(t, err)
			require.Equal(t, 3, c.UnreadCount, "6, 8 and 9")
		})
	}
}
