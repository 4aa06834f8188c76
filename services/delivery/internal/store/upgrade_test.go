package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store/migrations"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// Messages stored before messages_unadvanced became partial (0005), and
// before receipt_marks (0006: no mark for their thread), are advanced by
// receipts as before: the unread ones, once.
func TestUpgradeKeepsReceipts(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			testkit.MigrateBefore(t, db, migrations.FS, ".", "0005")
			t0 := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
			require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
				for seq, status := range map[int64]domain.Status{1: domain.Read, 2: domain.Delivered, 3: domain.Sent} {
					if err := insertRaw(ctx, tx, seq, status, t0); err != nil {
						return err
					}
				}
				return nil
			}))
			s, err := store.New(ctx, db)
			require.NoError(t, err)
			none := func([]domain.Message) []domain.Event { return nil }
			read := domain.Advance{Practice: "p1", ConversationID: "c1", ReaderIsPatient: true, Reader: "patients/pat", UpTo: 3, To: domain.Read, At: t0}
			changed, err := s.Advance(ctx, read, none)
			require.NoError(t, err)
			var seqs []int64
			for _, m := range changed {
				seqs = append(seqs, m.Seq)
				require.Equal(t, domain.Read, m.Status)
			}
			require.ElementsMatch(t, []int64{2, 3}, seqs)
			changed, err = s.Advance(ctx, read, none)
			require.NoError(t, err)
			require.Empty(t, changed, "a repeated receipt changes nothing")
		})
	}
}

// A thread's seq continues from its last message across 0007 (SQLite takes
// it from messages, no longer from conversation_seq), and a repeated
// request after it is still found.
func TestUpgradeKeepsSeq(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			testkit.MigrateBefore(t, db, migrations.FS, ".", "0007")
			t0 := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
			require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
				for seq := int64(1); seq <= 3; seq++ {
					if err := insertRaw(ctx, tx, seq, domain.Sent, t0); err != nil {
						return err
					}
				}
				_, err := tx.Exec(ctx, `INSERT INTO conversation_seq (practice, conversation_id, last_seq) VALUES ('p1', 'c1', 3)`)
				return err
			}))
			s, err := store.New(ctx, db)
			require.NoError(t, err)
			m, created, err := s.Send(ctx, msg("c1", "users/u1", "r4", "next"), oneEvent)
			require.NoError(t, err)
			require.True(t, created)
			require.Equal(t, int64(4), m.Seq)
			old := msg("c1", "users/u1", "r2", "hi")
			old.ContentHash = "h"
			m, created, err = s.Send(ctx, old, oneEvent)
			require.NoError(t, err)
			require.False(t, created, "a repeat of a request stored before the upgrade")
			require.Equal(t, int64(2), m.Seq)
			m, _, err = s.Send(ctx, msg("c2", "users/u1", "r5", "first of another thread"), oneEvent)
			require.NoError(t, err)
			require.Equal(t, int64(1), m.Seq)
		})
	}
}

// insertRaw stores staff message seq of p1/c1 as an older release did.
func insertRaw(ctx context.Context, tx *sqldb.Tx, seq int64, status domain.Status, at time.Time) error {
	_, err := tx.Exec(ctx, `INSERT INTO messages (practice, conversation_id, seq, patient_id, sender, sender_role,
		from_patient, text, extras, sensitive, status, create_time, request_id, content_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		"p1", "c1", seq, "pat", "users/u1", "dentist", false, "hi", "{}", false, int(status), sqldb.Micros(at), fmt.Sprint("r", seq), "h")
	return err
}
