package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// markReadDone runs a MarkRead of v up to upTo and returns its outcome on a
// channel.
func markReadDone(s interface {
	MarkRead(context.Context, string, string, domain.Viewer, int64, func(domain.Conversation) error,
		func(domain.Conversation, bool) []domain.Event) (domain.Conversation, error)
}, id string, v domain.Viewer, upTo int64) chan error {
	done := make(chan error, 1)
	go func() {
		c, err := s.MarkRead(context.Background(), "p1", id, v, upTo, allow, func(domain.Conversation, bool) []domain.Event {
			return []domain.Event{event()}
		})
		if err == nil && c.ReadSeq != upTo {
			err = context.Canceled // not raised: reported below
		}
		done <- err
	}()
	return done
}

// TestMarkReadAloneCommitsAtOnce: a markRead with no other in flight never
// waits for company, however long the linger (an hour here: the test would
// time out if it waited).
func TestMarkReadAloneCommitsAtOnce(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			s := newStore(t, b)
			s.MarkReadLinger = time.Hour
			t0 := time.Now()
			c := create(t, s, "pa", "Pat", t0)
			for seq := int64(1); seq <= 3; seq++ {
				apply(t, s, c, seq, false, t0.Add(time.Duration(seq)*time.Second))
			}
			for upTo := int64(1); upTo <= 3; upTo++ {
				select {
				case err := <-markReadDone(s, c.ID, patient, upTo):
					require.NoError(t, err)
				case <-time.After(10 * time.Second):
					t.Fatalf("markRead %d alone waited for company", upTo)
				}
			}
		})
	}
}

// TestMarkReadWithCompanyWaitsToShareACommit: on SQLite a markRead that
// finds another in flight waits up to the linger for a commit to join (here
// none comes, so it commits alone once the linger has passed); without the
// wait it would have returned at once. Its receipt is committed as any.
func TestMarkReadWithCompanyWaitsToShareACommit(t *testing.T) {
	s := newStore(t, testkit.Backends()[0]) // SQLite
	const linger = 150 * time.Millisecond
	s.MarkReadLinger = linger
	t0 := time.Now()
	c := create(t, s, "pa", "Pat", t0)
	apply(t, s, c, 1, false, t0.Add(time.Second))
	release := s.HoldMarkRead()
	defer release()
	start := time.Now()
	require.NoError(t, <-markReadDone(s, c.ID, patient, 1))
	require.GreaterOrEqual(t, time.Since(start), linger, "a markRead with company committed without waiting for it")
	got, err := s.Get(context.Background(), "p1", c.ID, patient)
	require.NoError(t, err)
	require.EqualValues(t, 1, got.ReadSeq)
}
