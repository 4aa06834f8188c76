package app

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// failing is the real repository, except that a transaction with the
// message of sequence number bad in it fails.
type failing struct {
	domain.Repository
	bad     int64
	batches [][]int64 // the sequence numbers of each ApplyMessages call
	events  []domain.Event
}

var errBad = errors.New("this message cannot be applied")

func (f *failing) ApplyMessages(ctx context.Context, ms []domain.MessageApplied,
	evs func(domain.MessageApplied, domain.Conversation, []string) []domain.Event) ([]domain.Outcome, error) {
	var seqs []int64
	for _, m := range ms {
		seqs = append(seqs, m.Seq)
	}
	f.batches = append(f.batches, seqs)
	for _, m := range ms {
		if m.Seq == f.bad {
			return nil, errBad
		}
	}
	return f.Repository.ApplyMessages(ctx, ms, func(m domain.MessageApplied, c domain.Conversation, r []string) []domain.Event {
		out := evs(m, c, r)
		f.events = append(f.events, out...)
		return out
	})
}

// A message that cannot be applied fails alone: the batch is split until
// it is by itself, and every other message is applied once, each thread's
// updates in message order, each with its own sequence number and side.
func TestApplyMessagesSplitsAroundAFailingMessage(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			a, c, ctx := newApp(t, b)
			f := &failing{Repository: a.repo, bad: 5}
			a.repo = f
			var ms []domain.MessageApplied
			for seq := int64(1); seq <= 8; seq++ {
				m := message(c, seq)
				m.FromPatient = seq%2 == 0
				if !m.FromPatient {
					m.Sender = "users/u1"
				}
				ms = append(ms, m)
			}
			errs := a.ApplyMessages(ctx, ms, func(string) string { return "Practice" })
			for i, err := range errs {
				if ms[i].Seq == f.bad {
					require.ErrorIs(t, err, errBad)
				} else {
					require.NoError(t, err, "message %d", ms[i].Seq)
				}
			}
			require.Equal(t, [][]int64{{1, 2, 3, 4, 5, 6, 7, 8}, {1, 2, 3, 4}, {5, 6, 7, 8}, {5, 6}, {5}, {6}, {7, 8}}, f.batches)

			var seqs []int64
			for _, e := range f.events {
				if u, ok := e.Msg.(*conversationv1.ConversationUpdated); ok {
					seqs = append(seqs, int64(u.GetMessageSeq()))
					require.Equal(t, u.GetMessageSeq()%2 == 0, u.GetMessageFromPatient())
					require.EqualValues(t, u.GetMessageSeq(), u.GetConversation().GetLastMessageSeq(), "the thread as of its message")
				}
			}
			require.Equal(t, []int64{1, 2, 3, 4, 6, 7, 8}, seqs)

			// The failed message comes back (redelivered) and is applied late.
			f.bad = 0
			require.Equal(t, []error{nil}, a.ApplyMessages(ctx, ms[4:5], func(string) string { return "Practice" }))
			got, err := a.repo.GetShared(ctx, "p1", c.ID)
			require.NoError(t, err)
			require.EqualValues(t, 8, got.LastMessageSeq)
			last := f.events[len(f.events)-1].Msg.(*conversationv1.Notification)
			require.Equal(t, c.Name()+"/messages/5", last.GetMessage(), "message 5 notified the patient")
		})
	}
}
