package app

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

func newApp(t *testing.T, b testkit.Backend) (*App, domain.Conversation, context.Context) {
	t.Helper()
	ctx := context.Background()
	st, err := store.New(ctx, testkit.OpenDB(t, b))
	require.NoError(t, err)
	c, _, err := st.Create(ctx, domain.Conversation{Practice: "p1", ID: ids.New(), PatientID: "pa",
		PatientDisplayName: "Alice", State: domain.Active, CreateTime: time.Now()}, func(domain.Conversation) []domain.Event { return nil })
	require.NoError(t, err)
	a := New(st, nil, testkit.Logger(t))
	who := auth.Identity{Subject: "u1", Practice: "p1", Role: auth.RoleDentist}
	return a, c, auth.WithIdentity(ctx, who)
}

func message(c domain.Conversation, seq int64) domain.MessageApplied {
	return domain.MessageApplied{Practice: "p1", ConversationID: c.ID, Seq: seq, FromPatient: true,
		Sender: "patients/pa", Time: time.Now(), Preview: "hi"}
}

func upTo(c domain.Conversation, seq int64) string {
	return fmt.Sprintf("%s/messages/%d", c.Name(), seq)
}

// MarkRead up to a message the projection has not applied yet waits for the
// projection's commit and then reads up to it; a message that never comes
// costs at most ProjectionWait and reads what exists; an upTo no message can
// reach yet is refused at once.
func TestMarkReadWaitsForTheProjectionBounded(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			a, c, ctx := newApp(t, b)
			require.NoError(t, a.ApplyMessage(ctx, message(c, 1), "Practice"))

			t.Run("wakes on the projection's commit", func(t *testing.T) {
				a.ProjectionWait = time.Minute // the wake, not the deadline, ends the wait
				type result struct {
					c   domain.Conversation
					err error
				}
				done := make(chan result, 1)
				go func() {
					got, err := a.MarkRead(ctx, c.Name(), upTo(c, 2))
					done <- result{got, err}
				}()
				require.Eventually(t, func() bool {
					a.seqs.mu.Lock()
					defer a.seqs.mu.Unlock()
					return a.seqs.convs[convKey("p1", c.ID)] != nil
				}, 10*time.Second, time.Millisecond, "MarkRead waits")
				require.NoError(t, a.ApplyMessage(ctx, message(c, 2), "Practice"))
				got := <-done
				require.NoError(t, got.err)
				require.EqualValues(t, 2, got.c.ReadSeq)
				require.Empty(t, a.seqs.convs, "the waiter left")
			})

			t.Run("a message that never comes: what exists", func(t *testing.T) {
				a.ProjectionWait = 50 * time.Millisecond
				got, err := a.MarkRead(ctx, c.Name(), upTo(c, 3))
				require.NoError(t, err)
				require.EqualValues(t, 2, got.ReadSeq)
			})

			t.Run("beyond anything that could exist", func(t *testing.T) {
				a.ProjectionWait = time.Minute
				_, err := a.MarkRead(ctx, c.Name(), upTo(c, 2+MaxUpToAhead+1))
				require.ErrorIs(t, err, domain.ErrUpToAhead)
				got, err := a.MarkRead(ctx, c.Name(), "")
				require.NoError(t, err)
				require.EqualValues(t, 2, got.ReadSeq)
			})
		})
	}
}

// One caller waits at most maxWaitsPerCaller times at once.
func TestWaitsPerCallerAreBounded(t *testing.T) {
	var w seqWaiters
	for range maxWaitsPerCaller {
		require.True(t, w.join("p/c", "users/u1"))
	}
	require.False(t, w.join("p/c", "users/u1"), "one wait too many")
	require.True(t, w.join("p/c", "users/u2"), "another caller still waits")
	ch := w.next("p/c")
	w.fire("p/c")
	<-ch // fired
	for range maxWaitsPerCaller {
		w.leave("p/c", "users/u1")
	}
	w.leave("p/c", "users/u2")
	require.Empty(t, w.convs)
	require.Empty(t, w.callers)
}
