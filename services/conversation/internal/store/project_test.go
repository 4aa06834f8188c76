package store_test

import (
	"cmp"
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// projected is what the projection told of one applied message.
type projected struct {
	Seq         int64
	FromPatient bool
	Thread      domain.Conversation
	Recipients  []string
}

// recorder captures ApplyMessages' calls of evs, per thread in call order.
type recorder map[string][]projected

func (r recorder) evs(m domain.MessageApplied, c domain.Conversation, recipients []string) []domain.Event {
	r[c.ID] = append(r[c.ID], projected{Seq: m.Seq, FromPatient: m.FromPatient, Thread: c, Recipients: slices.Clone(recipients)})
	return nil
}

// needsReply is the definition of awaiting_reply_since, read from the
// index: the oldest patient message after the newest staff message.
func needsReply(t *testing.T, db *sqldb.DB, id string) time.Time {
	t.Helper()
	var at int64
	require.NoError(t, db.QueryRow(context.Background(), `SELECT COALESCE(MIN(m.create_time), 0) FROM message_index m
		WHERE m.practice = ? AND m.conversation_id = ? AND m.from_patient = ? AND m.seq > COALESCE((SELECT MAX(s.seq)
		FROM message_index s WHERE s.practice = ? AND s.conversation_id = ? AND s.from_patient = ?), 0)`,
		"p1", id, true, "p1", id, false).Scan(&at))
	if at == 0 {
		return time.Time{}
	}
	return sqldb.FromMicros(at)
}

// A batch projects exactly as its messages one at a time (where the index
// derives each state: applyOnes' UPDATE), in the order the batch applies
// them (each thread's in sequence order): the same outcomes,
// and for every applied message the same thread as of that message (last
// message, reactivation, needs reply as the index defines it) and the same
// recipients — with messages out of order, replays inside and across
// batches, staff joining and muting, and a message for a thread that does
// not exist. A redelivered batch applies nothing and tells nothing.
func TestApplyMessagesBatchIsMessageByMessage(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			t0 := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
			type side struct {
				db *sqldb.DB
				s  *store.Store
				r  recorder
			}
			open := func() side {
				db := testkit.OpenDB(t, b)
				s, err := store.New(ctx, db)
				require.NoError(t, err)
				return side{db: db, s: s, r: recorder{}}
			}
			one, batched := open(), open()
			// More threads than one statement of applyOnes takes (indexRows),
			// so that a batch of one message per thread spans two.
			const nThreads = 20
			var threads []string
			for ti := range nThreads {
				p := "p" + string(rune('a'+ti))
				id := ids.New()
				threads = append(threads, id)
				for _, sd := range []side{one, batched} {
					_, _, err := sd.s.Create(ctx, domain.Conversation{Practice: "p1", ID: id, PatientID: p, PatientDisplayName: p,
						State: domain.Active, CreateTime: t0}, none)
					require.NoError(t, err)
				}
			}
			tr := true
			for _, sd := range []side{one, batched} {
				// u2 muted the first thread before ever writing in it.
				_, err := sd.s.SetFlags(ctx, "p1", threads[0], staff2, domain.UserFlags{Muted: &tr}, none)
				require.NoError(t, err)
			}

			// Each thread's messages: random sides and staff senders, in
			// sequence order but for some delayed, some delivered twice.
			rnd := rand.New(rand.NewPCG(10, 10))
			perThread := make([][]domain.MessageApplied, len(threads))
			for ti, id := range threads {
				var ms []domain.MessageApplied
				for seq := int64(1); seq <= 40; seq++ {
					m := domain.MessageApplied{Practice: "p1", ConversationID: id, Seq: seq,
						Time: t0.Add(time.Duration(seq) * time.Minute), Preview: "m"}
					if rnd.IntN(3) != 0 {
						m.FromPatient, m.Sender = true, "patients/p"+string(rune('a'+ti))
					} else {
						m.Sender = []string{"users/u1", "users/u2", "users/u3"}[rnd.IntN(3)]
					}
					ms = append(ms, m)
				}
				for i := 0; i+1 < len(ms); i++ {
					if rnd.IntN(3) == 0 { // delayed by a few messages
						j := min(i+1+rnd.IntN(10), len(ms)-1)
						m := ms[i]
						ms = slices.Insert(slices.Delete(ms, i, i+1), j, m)
					}
				}
				perThread[ti] = ms
			}
			// The threads interleaved, each in its own order.
			var arrivals []domain.MessageApplied
			for len(arrivals) < nThreads*40 {
				ti := rnd.IntN(len(perThread))
				if len(perThread[ti]) > 0 {
					arrivals = append(arrivals, perThread[ti][0])
					perThread[ti] = perThread[ti][1:]
				}
			}
			for i := 0; i < len(arrivals); i += 7 {
				arrivals = slices.Insert(arrivals, min(i+rnd.IntN(20), len(arrivals)), arrivals[i]) // a redelivery
			}
			missing := domain.MessageApplied{Practice: "p1", ConversationID: ids.New(), Seq: 1, Sender: "users/u1", Time: t0, Preview: "m"}
			arrivals = slices.Insert(arrivals, len(arrivals)/2, missing)

			var outOne, outBatched []domain.Outcome
			for rest := arrivals; len(rest) > 0; {
				n := min(len(rest), 1+rnd.IntN(40))
				batch := rest[:n]
				rest = rest[n:]
				got, err := batched.s.ApplyMessages(ctx, batch, batched.r.evs)
				require.NoError(t, err)
				require.Len(t, got, n)
				// The same messages one at a time, in the batch's order of
				// application; the outcomes back in arrival order.
				order := make([]int, n)
				for i := range order {
					order[i] = i
				}
				slices.SortStableFunc(order, func(i, j int) int {
					return cmp.Or(cmp.Compare(batch[i].ConversationID, batch[j].ConversationID), cmp.Compare(batch[i].Seq, batch[j].Seq))
				})
				single := make([]domain.Outcome, n)
				for _, i := range order {
					o, err := one.s.ApplyMessages(ctx, batch[i:i+1], one.r.evs)
					require.NoError(t, err)
					single[i] = o[0]
					if o[0] == domain.Applied {
						told := one.r[batch[i].ConversationID]
						require.Equal(t, needsReply(t, one.db, batch[i].ConversationID), told[len(told)-1].Thread.AwaitingReplySince,
							"needs reply as the index defines it, after message %d", batch[i].Seq)
					}
				}
				outOne, outBatched = append(outOne, single...), append(outBatched, got...)

				// A redelivered batch: nothing applied, nothing told.
				again, err := batched.s.ApplyMessages(ctx, batch, func(domain.MessageApplied, domain.Conversation, []string) []domain.Event {
					t.Fatal("a replay told of a message")
					return nil
				})
				require.NoError(t, err)
				for i, o := range again {
					if batch[i].ConversationID == missing.ConversationID {
						require.Equal(t, domain.NoThread, o)
					} else {
						require.Equal(t, domain.Replayed, o)
					}
				}
			}
			require.Equal(t, outOne, outBatched)
			applied := 0
			for _, o := range outBatched {
				if o == domain.Applied {
					applied++
				}
			}
			require.Equal(t, nThreads*40, applied, "every message once")
			require.Contains(t, outBatched, domain.NoThread)
			require.Contains(t, outBatched, domain.Replayed)
			require.Equal(t, one.r, batched.r)
			for _, id := range threads {
				require.Len(t, batched.r[id], 40)
				a, err := one.s.Get(ctx, "p1", id, staff)
				require.NoError(t, err)
				bt, err := batched.s.Get(ctx, "p1", id, staff)
				require.NoError(t, err)
				require.Equal(t, a, bt)
				require.EqualValues(t, 40, bt.LastMessageSeq)
				require.Equal(t, needsReply(t, batched.db, id), bt.AwaitingReplySince)
			}
			for _, told := range batched.r[threads[0]] {
				require.NotContains(t, told.Recipients, "users/u2", "u2 muted the thread")
			}
		})
	}
}
