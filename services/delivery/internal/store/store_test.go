package store_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

func newStore(t *testing.T, b testkit.Backend) (*store.Store, func() int) {
	t.Helper()
	db := testkit.OpenDB(t, b)
	s, err := store.New(context.Background(), db)
	require.NoError(t, err)
	outboxRows := func() int {
		var n int
		require.NoError(t, db.QueryRow(context.Background(), `SELECT COUNT(*) FROM outbox`).Scan(&n))
		return n
	}
	return s, outboxRows
}

func msg(conv, sender, requestID, text string) domain.Message {
	fromPatient := sender[:8] == "patients"
	role := "dentist"
	if fromPatient {
		role = "patient"
	}
	return domain.Message{Practice: "p1", ConversationID: conv, PatientID: "pat", Sender: sender, SenderRole: role,
		FromPatient: fromPatient, Text: text, Status: domain.Sent, CreateTime: time.Now().UTC().Truncate(time.Microsecond),
		RequestID: requestID, ContentHash: domain.ContentHash(conv, text, false, nil, 0, "")}
}

func oneEvent(m domain.Message) []domain.Event {
	id := ids.New()
	return []domain.Event{{ID: id, Subject: "clinicchat.delivery.message.created", Msg: &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id}}}}
}

// The repository contract, run against every backend.
func TestRepositoryContract(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Run("sequence numbers and newest-first listing", func(t *testing.T) {
				s, outboxRows := newStore(t, b)
				ctx := context.Background()
				for i, text := range []string{"one", "two", "three"} {
					m, created, err := s.Send(ctx, msg("c1", "users/u1", ids.New(), text), oneEvent)
					require.NoError(t, err)
					require.True(t, created)
					require.EqualValues(t, i+1, m.Seq)
				}
				other, _, err := s.Send(ctx, msg("c2", "users/u1", ids.New(), "other thread"), oneEvent)
				require.NoError(t, err)
				require.EqualValues(t, 1, other.Seq, "each conversation counts on its own")
				list, err := s.List(ctx, "p1", "c1", 0, 2)
				require.NoError(t, err)
				require.Len(t, list, 2)
				require.Equal(t, "three", list[0].Text)
				require.Equal(t, "two", list[1].Text)
				list, err = s.List(ctx, "p1", "c1", 2, 10)
				require.NoError(t, err)
				require.Len(t, list, 1)
				require.Equal(t, "one", list[0].Text)
				require.Equal(t, 4, outboxRows(), "one event per message, in the same transaction")
				_, err = s.Get(ctx, "other-practice", "c1", 1)
				require.ErrorIs(t, err, domain.ErrNotFound, "tenancy")
			})
			t.Run("the sender's display name is stored with the message", func(t *testing.T) {
				s, _ := newStore(t, b)
				ctx := context.Background()
				m := msg("c1", "users/u1", ids.New(), "hi")
				m.SenderDisplayName = "Dr. Lee"
				_, _, err := s.Send(ctx, m, oneEvent)
				require.NoError(t, err)
				got, err := s.Get(ctx, "p1", "c1", 1)
				require.NoError(t, err)
				require.Equal(t, "Dr. Lee", got.SenderDisplayName)
			})
			t.Run("a repeated request returns the first message; other content is refused", func(t *testing.T) {
				s, outboxRows := newStore(t, b)
				ctx := context.Background()
				first, created, err := s.Send(ctx, msg("c1", "users/u1", "req-1", "hello"), oneEvent)
				require.NoError(t, err)
				require.True(t, created)
				again, created, err := s.Send(ctx, msg("c1", "users/u1", "req-1", "hello"), oneEvent)
				require.NoError(t, err)
				require.False(t, created)
				require.Equal(t, first.Seq, again.Seq)
				_, _, err = s.Send(ctx, msg("c1", "users/u1", "req-1", "changed"), oneEvent)
				require.ErrorIs(t, err, domain.ErrRequestIDReused)
				_, created, err = s.Send(ctx, msg("c1", "users/u2", "req-1", "hello"), oneEvent)
				require.NoError(t, err)
				require.True(t, created, "request ids are per sender")
				next, _, err := s.Send(ctx, msg("c1", "users/u1", "req-2", "next"), oneEvent)
				require.NoError(t, err)
				require.EqualValues(t, 3, next.Seq, "a refused repeat leaves no gap")
				require.Equal(t, 3, outboxRows())
			})
			t.Run("concurrent repeats store exactly one message", func(t *testing.T) {
				s, outboxRows := newStore(t, b)
				ctx := context.Background()
				var wg sync.WaitGroup
				seqs := make([]int64, 20)
				errsOut := make([]error, 20)
				for i := range 20 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						m, _, err := s.Send(ctx, msg("c1", "users/u1", "same", "hi"), oneEvent)
						seqs[i], errsOut[i] = m.Seq, err
					}()
				}
				wg.Wait()
				for i := range 20 {
					require.NoError(t, errsOut[i])
					require.EqualValues(t, 1, seqs[i])
				}
				list, err := s.List(ctx, "p1", "c1", 0, 100)
				require.NoError(t, err)
				require.Len(t, list, 1)
				require.Equal(t, 1, outboxRows())
			})
			t.Run("receipts only rise and replays change nothing", func(t *testing.T) {
				s, _ := newStore(t, b)
				ctx := context.Background()
				for _, sender := range []string{"users/u1", "users/u1", "patients/pat", "users/u1"} {
					_, _, err := s.Send(ctx, msg("c1", sender, ids.New(), "x"), oneEvent)
					require.NoError(t, err)
				}
				events := 0
				count := func(ms []domain.Message) []domain.Event { events += len(ms); return nil }
				at := time.Now().UTC()
				read := domain.Advance{Practice: "p1", ConversationID: "c1", ReaderIsPatient: true, Reader: "patients/pat", UpTo: 2, To: domain.Read, At: at}
				changed, err := s.Advance(ctx, read, count)
				require.NoError(t, err)
				require.Len(t, changed, 2, "staff messages 1 and 2")
				// A late, lower DELIVERED receipt must not lower READ.
				changed, err = s.Advance(ctx, domain.Advance{Practice: "p1", ConversationID: "c1", ReaderIsPatient: true, UpTo: 4, To: domain.Delivered, At: at}, count)
				require.NoError(t, err)
				require.Len(t, changed, 1, "only message 4 moves to delivered")
				require.EqualValues(t, 4, changed[0].Seq)
				changed, err = s.Advance(ctx, read, count) // replay
				require.NoError(t, err)
				require.Empty(t, changed)
				m1, err := s.Get(ctx, "p1", "c1", 1)
				require.NoError(t, err)
				require.Equal(t, domain.Read, m1.Status)
				require.Equal(t, "patients/pat", m1.ReadBy)
				require.False(t, m1.DeliverTime.IsZero(), "read implies delivered")
				m3, err := s.Get(ctx, "p1", "c1", 3)
				require.NoError(t, err)
				require.Equal(t, domain.Sent, m3.Status, "the patient's own message is not moved by the patient")
				require.Equal(t, 3, events)
			})
			t.Run("a receipt beyond the last message still leaves later messages to later receipts", func(t *testing.T) {
				s, _ := newStore(t, b)
				ctx := context.Background()
				send := func(sender string) {
					_, _, err := s.Send(ctx, msg("c1", sender, ids.New(), "x"), oneEvent)
					require.NoError(t, err)
				}
				seqs := func(ms []domain.Message) []int64 {
					var out []int64
					for _, m := range ms {
						out = append(out, m.Seq)
					}
					return out
				}
				none := func([]domain.Message) []domain.Event { return nil }
				at := time.Now().UTC()
				delivered := domain.Advance{Practice: "p1", ConversationID: "c1", ReaderIsPatient: true, UpTo: 100, To: domain.Delivered, At: at}
				read := domain.Advance{Practice: "p1", ConversationID: "c1", ReaderIsPatient: true, Reader: "patients/pat", UpTo: 100, To: domain.Read, At: at}
				send("users/u1")
				send("users/u1")
				changed, err := s.Advance(ctx, delivered, none)
				require.NoError(t, err)
				require.ElementsMatch(t, []int64{1, 2}, seqs(changed))
				send("patients/pat")
				send("users/u1")
				changed, err = s.Advance(ctx, delivered, none)
				require.NoError(t, err)
				require.Equal(t, []int64{4}, seqs(changed), "message 4 came after the first receipt's upTo 100")
				changed, err = s.Advance(ctx, read, none)
				require.NoError(t, err)
				require.ElementsMatch(t, []int64{1, 2, 4}, seqs(changed))
				send("users/u1")
				changed, err = s.Advance(ctx, delivered, none)
				require.NoError(t, err)
				require.Equal(t, []int64{5}, seqs(changed), "a READ mark does not cover a later message")
				changed, err = s.Advance(ctx, read, none)
				require.NoError(t, err)
				require.Equal(t, []int64{5}, seqs(changed))
				// The patient's own message is the staff side's to advance.
				changed, err = s.Advance(ctx, domain.Advance{Practice: "p1", ConversationID: "c1", Reader: "users/u1", UpTo: 100, To: domain.Read, At: at}, none)
				require.NoError(t, err)
				require.Equal(t, []int64{3}, seqs(changed))
			})
			t.Run("AdvanceAll runs a batch of receipts in order in one write", func(t *testing.T) {
				s, outboxRows := newStore(t, b)
				ctx := context.Background()
				for _, conv := range []string{"c1", "c2"} {
					for _, sender := range []string{"users/u1", "patients/pat", "users/u1"} {
						_, _, err := s.Send(ctx, msg(conv, sender, ids.New(), "x"), oneEvent)
						require.NoError(t, err)
					}
				}
				at := time.Now().UTC()
				byPatient := func(conv string, upTo int64) domain.Advance {
					return domain.Advance{Practice: "p1", ConversationID: conv, ReaderIsPatient: true, Reader: "patients/pat", UpTo: upTo, To: domain.Read, At: at}
				}
				batch := []domain.Advance{byPatient("c1", 1), byPatient("c1", 3), byPatient("c2", 3),
					{Practice: "p1", ConversationID: "c2", Reader: "users/u2", UpTo: 3, To: domain.Read, At: at}}
				var got []string
				evs := func(a domain.Advance, ms []domain.Message) []domain.Event {
					var out []domain.Event
					slices.SortFunc(ms, func(a, b domain.Message) int { return int(a.Seq - b.Seq) }) // RETURNING has no order
					for _, m := range ms {
						got = append(got, fmt.Sprintf("%s/%d by %s", m.ConversationID, m.Seq, m.ReadBy))
						out = append(out, oneEvent(m)...)
					}
					return out
				}
				before := outboxRows()
				require.NoError(t, s.AdvanceAll(ctx, batch, evs))
				require.Equal(t, []string{"c1/1 by patients/pat", "c1/3 by patients/pat", "c2/1 by patients/pat", "c2/3 by patients/pat",
					"c2/2 by users/u2"}, got)
				require.Equal(t, before+5, outboxRows(), "one event per changed message")
				got = nil
				require.NoError(t, s.AdvanceAll(ctx, batch, evs), "a redelivered batch")
				require.Empty(t, got)
				require.Equal(t, before+5, outboxRows())
			})
			t.Run("MarkDelivered runs a batch of delivered receipts in one write", func(t *testing.T) {
				s, outboxRows := newStore(t, b)
				ctx := context.Background()
				for _, sender := range []string{"users/u1", "patients/pat", "users/u1"} {
					_, _, err := s.Send(ctx, msg("c1", sender, ids.New(), "x"), oneEvent)
					require.NoError(t, err)
				}
				at := time.Now().UTC()
				batch := []domain.Advance{
					{Practice: "p1", ConversationID: "c1", ReaderIsPatient: true, Reader: "patients/pat", UpTo: 3, To: domain.Delivered, At: at},
					{Practice: "p1", ConversationID: "c1", Reader: "users/u2", UpTo: 3, To: domain.Delivered, At: at},
				}
				var got []int64
				evs := func(_ domain.Advance, ms []domain.Message) []domain.Event {
					var out []domain.Event
					for _, m := range ms {
						require.Equal(t, domain.Delivered, m.Status)
						got = append(got, m.Seq)
						out = append(out, oneEvent(m)...)
					}
					return out
				}
				before := outboxRows()
				require.NoError(t, s.MarkDelivered(ctx, time.Millisecond, batch, evs))
				slices.Sort(got)
				require.Equal(t, []int64{1, 2, 3}, got)
				require.Equal(t, before+3, outboxRows(), "one event per changed message")
				got = nil
				require.NoError(t, s.MarkDelivered(ctx, time.Millisecond, batch, evs), "a repeated batch")
				require.Empty(t, got)
			})
			t.Run("concurrent receipts and sends advance every message once per status", func(t *testing.T) {
				s, _ := newStore(t, b)
				ctx := context.Background()
				const n = 60
				var mu sync.Mutex
				moves := map[int64][]domain.Status{}
				record := func(ms []domain.Message) []domain.Event {
					mu.Lock()
					defer mu.Unlock()
					for _, m := range ms {
						moves[m.Seq] = append(moves[m.Seq], m.Status)
					}
					return nil
				}
				var wg sync.WaitGroup
				errc := make(chan error, 4*n)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range n {
						if _, _, err := s.Send(ctx, msg("c1", "users/u1", ids.New(), "x"), oneEvent); err != nil {
							errc <- err
						}
					}
				}()
				for w := range 6 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := range n {
							to := domain.Delivered
							if (i+w)%3 == 0 {
								to = domain.Read
							}
							if _, err := s.Advance(ctx, domain.Advance{Practice: "p1", ConversationID: "c1", ReaderIsPatient: true,
								Reader: "patients/pat", UpTo: int64(i + w), To: to, At: time.Now().UTC()}, record); err != nil {
								errc <- err
							}
						}
					}()
				}
				wg.Wait()
				close(errc)
				for err := range errc {
					require.NoError(t, err)
				}
				// Whatever the interleaving, a last READ receipt reaches every message.
				_, err := s.Advance(ctx, domain.Advance{Practice: "p1", ConversationID: "c1", ReaderIsPatient: true,
					Reader: "patients/pat", UpTo: n, To: domain.Read, At: time.Now().UTC()}, record)
				require.NoError(t, err)
				list, err := s.List(ctx, "p1", "c1", 0, 2*n)
				require.NoError(t, err)
				require.Len(t, list, n)
				for _, m := range list {
					require.Equal(t, domain.Read, m.Status, "message %d", m.Seq)
					got := moves[m.Seq]
					require.NotEmpty(t, got, "message %d", m.Seq)
					require.LessOrEqual(t, len(got), 2, "message %d moved %v", m.Seq, got)
					require.Equal(t, domain.Read, got[len(got)-1], "message %d", m.Seq)
					if len(got) == 2 {
						require.Equal(t, domain.Delivered, got[0], "message %d moved %v", m.Seq, got)
					}
				}
			})
		})
	}
}
