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
					if _, err := tx.Exec(ctx, `INSERT INTO messages (practice, conversation_id, seq, patient_id, sender, sender_role,
						from_patient, text, extras, sensitive, status, create_time, request_id, content_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
						"p1", "c1", seq, "pat", "users/u1", "dentist", false, "hi", "{}", false, int(status), sqldb.Micros(t0), fmt.Sprint("r", seq), "h"); err != nil {
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
