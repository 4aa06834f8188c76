package store_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// Many sends at once into a few threads, with repeats of one request id
// sent at once (some the same, some with another text): on PostgreSQL
// they go in batches (store.SentTogether), on SQLite one at a time; on
// both every thread's seqs are 1..n without a gap, every request is stored
// once with one event, a repeat answers with the first message and a
// reused id with ErrRequestIDReused.
func TestConcurrentSendsAreStoredOnceInGaplessSeqs(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			s, outboxRows := newStore(t, b)
			ctx := context.Background()
			const threads, senders, per = 3, 16, 25
			type result struct {
				m       domain.Message
				created bool
			}
			var mu sync.Mutex
			byRequest := map[string][]result{}
			reused := 0
			var g errgroup.Group
			for w := range senders {
				g.Go(func() error {
					for i := range per {
						conv := fmt.Sprintf("c%d", (w+i)%threads)
						req, text := ids.New(), "hi"
						if i%5 == 0 { // the same request from two senders at once (pairs of w)
							req, conv = fmt.Sprintf("rep-%d-%d", w/2, i), fmt.Sprintf("c%d", (w/2+i)%threads)
						}
						if i%10 == 0 && w%2 == 1 {
							text = "other" // a reused id with another text
						}
						m, created, err := s.Send(ctx, msg(conv, "users/u1", req, text), oneEvent)
						if i%10 == 0 && err != nil {
							require.ErrorIs(t, err, domain.ErrRequestIDReused)
							mu.Lock()
							reused++
							mu.Unlock()
							continue
						}
						if err != nil {
							return err
						}
						mu.Lock()
						byRequest[req] = append(byRequest[req], result{m, created})
						mu.Unlock()
					}
					return nil
				})
			}
			require.NoError(t, g.Wait())
			stored := 0
			for req, rs := range byRequest {
				created := 0
				for _, r := range rs {
					require.Equal(t, rs[0].m.Seq, r.m.Seq, "request %s: one message", req)
					require.Equal(t, rs[0].m.ConversationID, r.m.ConversationID)
					if r.created {
						created++
					}
				}
				require.Equal(t, 1, created, "request %s stored once", req)
				stored++
			}
			require.Equal(t, senders/2*((per+9)/10), reused, "each reused id refused once")
			total := 0
			for c := range threads {
				list, err := s.List(ctx, "p1", fmt.Sprintf("c%d", c), 0, 1000)
				require.NoError(t, err)
				for i, m := range list {
					require.EqualValues(t, len(list)-i, m.Seq, "thread c%d: gapless seqs", c)
					prev, ok := byRequest[m.RequestID]
					require.True(t, ok, "request %s answered", m.RequestID)
					require.Equal(t, m.Seq, prev[0].m.Seq)
				}
				total += len(list)
			}
			require.Equal(t, stored, total)
			require.Equal(t, total, outboxRows(), "one event per stored message")
			if b.Name == "postgres" {
				require.Positive(t, store.SentTogether(s), "sends waiting at once go in one statement")
				require.EqualValues(t, 1, store.SendWritesAtOnce(s), "one batch write in flight: the next gathers meanwhile")
			}
		})
	}
}
