package store_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// A receipt's mark rises to its upTo or the thread's last message, whichever
// is lower, even when no message of its side was in the range; it never
// falls, and a thread without messages gets no mark.
func TestReceiptMarks(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			s, db := openStore(t, b)
			mark := func() (delivered, read int64) {
				err := db.QueryRow(ctx, `SELECT delivered_seq, read_seq FROM receipt_marks
					WHERE practice = 'p1' AND conversation_id = 'c1' AND from_patient = ?`, false).Scan(&delivered, &read)
				if errors.Is(err, sql.ErrNoRows) {
					return -1, -1
				}
				require.NoError(t, err)
				return delivered, read
			}
			none := func([]domain.Message) []domain.Event { return nil }
			receipt := func(upTo int64, to domain.Status) []domain.Message {
				changed, err := s.Advance(ctx, domain.Advance{Practice: "p1", ConversationID: "c1", ReaderIsPatient: true,
					Reader: "patients/pat", UpTo: upTo, To: to, At: time.Now().UTC()}, none)
				require.NoError(t, err)
				return changed
			}
			require.Empty(t, receipt(5, domain.Delivered))
			d, r := mark()
			require.EqualValues(t, -1, d, "no mark for a thread without messages")
			require.EqualValues(t, -1, r)
			for _, sender := range []string{"patients/pat", "patients/pat", "patients/pat", "users/u1"} {
				_, _, err := s.Send(ctx, msg("c1", sender, ids.New(), "x"), oneEvent)
				require.NoError(t, err)
			}
			require.Empty(t, receipt(3, domain.Delivered), "only the patient's own messages up to 3")
			d, r = mark()
			require.EqualValues(t, 3, d)
			require.EqualValues(t, 0, r)
			changed := receipt(100, domain.Read)
			require.Len(t, changed, 1)
			require.EqualValues(t, 4, changed[0].Seq)
			d, r = mark()
			require.EqualValues(t, 4, d, "a READ mark is a DELIVERED mark, up to the last message")
			require.EqualValues(t, 4, r)
			require.Empty(t, receipt(2, domain.Delivered))
			d, r = mark()
			require.EqualValues(t, 4, d, "a lower receipt does not lower the mark")
			require.EqualValues(t, 4, r)
		})
	}
}

// A batch of more receipts than one statement raises (raiseMarks' 16 on
// SQLite), two of them for one thread: every thread's mark is raised, the
// thread's to the higher receipt, and the next batch moves only what is
// above the marks.
func TestAdvanceAllRaisesEveryMark(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			s, db := openStore(t, b)
			const threads = 21
			for i := range threads {
				for range 3 {
					_, _, err := s.Send(ctx, msg(fmt.Sprint("c", i), "users/u1", ids.New(), "x"), oneEvent)
					require.NoError(t, err)
				}
			}
			batch := func(upTo int64) []domain.Advance {
				var as []domain.Advance
				for i := range threads {
					as = append(as, domain.Advance{Practice: "p1", ConversationID: fmt.Sprint("c", i), ReaderIsPatient: true,
						Reader: "patients/pat", UpTo: upTo, To: domain.Read, At: time.Now().UTC()})
				}
				return as
			}
			moved := map[string][]int64{}
			evs := func(a domain.Advance, ms []domain.Message) []domain.Event {
				for _, m := range ms {
					moved[m.ConversationID] = append(moved[m.ConversationID], m.Seq)
				}
				return nil
			}
			first := batch(1)
			first = append(first, batch(2)[5]) // c5 twice: to 1, then to 2
			require.NoError(t, s.AdvanceAll(ctx, first, evs))
			var n int
			require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM receipt_marks WHERE read_seq = 1 AND delivered_seq = 1`).Scan(&n))
			require.Equal(t, threads-1, n)
			require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM receipt_marks WHERE read_seq = 2 AND conversation_id = 'c5'`).Scan(&n))
			require.Equal(t, 1, n)
			clear(moved)
			require.NoError(t, s.AdvanceAll(ctx, batch(3), evs))
			require.Len(t, moved, threads)
			for conv, seqs := range moved {
				if conv == "c5" {
					require.Equal(t, []int64{3}, seqs)
				} else {
					require.ElementsMatch(t, []int64{2, 3}, seqs, conv)
				}
			}
		})
	}
}

// openStore is a migrated store on b and its database.
func openStore(t testing.TB, b testkit.Backend) (*store.Store, *sqldb.DB) {
	t.Helper()
	db := testkit.OpenDB(t, b)
	s, err := store.New(context.Background(), db)
	require.NoError(t, err)
	return s, db
}
