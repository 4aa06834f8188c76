package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// countUnread is the unread count as a scan (the query before message_index
// had ordinals): the side's messages after read.
func countUnread(t *testing.T, db *sqldb.DB, id string, fromPatient bool, read int64) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow(context.Background(), `SELECT COUNT(*) FROM message_index m WHERE m.practice = ?
		AND m.conversation_id = ? AND m.from_patient = ? AND m.seq > ?`, "p1", id, fromPatient, read).Scan(&n))
	return n
}

// requireOrdinals checks every index row's ordinal against its rank in its
// side of its thread.
func requireOrdinals(t *testing.T, db *sqldb.DB) {
	t.Helper()
	var wrong, rows int
	require.NoError(t, db.QueryRow(context.Background(), `SELECT COUNT(*), COALESCE(SUM(CASE WHEN m.ordinal = (SELECT COUNT(*)
		FROM message_index x WHERE x.practice = m.practice AND x.conversation_id = m.conversation_id
		AND x.from_patient = m.from_patient AND x.seq <= m.seq) THEN 0 ELSE 1 END), 0) FROM message_index m`).Scan(&rows, &wrong))
	require.Zero(t, wrong, "rows whose ordinal is not their rank in their side, of %d", rows)
}

// setRead puts a viewer's read watermark at read (also below what it was).
func setRead(t *testing.T, db *sqldb.DB, id, user string, read int64) {
	t.Helper()
	require.NoError(t, db.Write(context.Background(), func(tx *sqldb.Tx) error {
		_, err := tx.Exec(context.Background(), `INSERT INTO user_state (practice, conversation_id, user_name, read_seq, update_time)
			VALUES (?, ?, ?, ?, 0) ON CONFLICT (practice, conversation_id, user_name) DO UPDATE SET read_seq = excluded.read_seq`,
			"p1", id, user, read)
		return err
	}))
}

// The unread count (ordinals) equals the scan's for staff and the patient,
// at every watermark, whatever order the projection sees messages in: in
// order, shuffled, with gaps, with duplicates inside and across batches and
// redelivered batches, one message or many per batch, several threads per
// batch, and batches of one thread projected concurrently (replicas).
func TestUnreadCountMatchesScan(t *testing.T) {
	modes := []struct {
		name             string
		shuffle          bool
		dups             float64 // share of messages sent again
		maxBatch         int
		writers          int
		redeliver, multi bool
	}{
		{name: "in-order-single", maxBatch: 1, writers: 1},
		{name: "in-order-batches", maxBatch: 12, writers: 1, multi: true},
		{name: "shuffled-single", shuffle: true, maxBatch: 1, writers: 1},
		{name: "shuffled-batches-dups", shuffle: true, dups: 0.3, maxBatch: 40, writers: 1, redeliver: true, multi: true},
		{name: "shuffled-concurrent", shuffle: true, dups: 0.2, maxBatch: 8, writers: 3, multi: true},
	}
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			for mi, mode := range modes {
				t.Run(mode.name, func(t *testing.T) {
					ctx := context.Background()
					db := testkit.OpenDB(t, b)
					s, err := store.New(ctx, db)
					require.NoError(t, err)
					rng := rand.New(rand.NewPCG(uint64(mi), 10))
					t0 := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
					var convs []domain.Conversation
					var ms []domain.MessageApplied
					maxSeq := map[string]int64{}
					for i := range 3 {
						c := create(t, s, fmt.Sprintf("pa%d", i), "P", t0)
						convs = append(convs, c)
						seq := int64(0)
						for range 60 + rng.IntN(60) {
							seq += 1 + int64(rng.IntN(3)/2) // gaps: a seq never projected
							fromPatient := rng.IntN(3) == 0
							sender := "users/u1"
							if fromPatient {
								sender = "patients/" + c.PatientID
							}
							ms = append(ms, domain.MessageApplied{Practice: "p1", ConversationID: c.ID, Seq: seq, FromPatient: fromPatient,
								Sender: sender, Time: t0.Add(time.Duration(seq) * time.Second), Preview: "m"})
						}
						maxSeq[c.ID] = seq
					}
					if !mode.multi { // one thread at a time, in order of thread
						ms = ms[:len(ms):len(ms)]
					}
					if mode.shuffle {
						rng.Shuffle(len(ms), func(i, j int) { ms[i], ms[j] = ms[j], ms[i] })
					} else if mode.multi { // interleave the threads, each in order
						var per [3][]domain.MessageApplied
						for _, m := range ms {
							for i, c := range convs {
								if c.ID == m.ConversationID {
									per[i] = append(per[i], m)
								}
							}
						}
						ms = ms[:0]
						for len(per[0])+len(per[1])+len(per[2]) > 0 {
							i := rng.IntN(3)
							if len(per[i]) > 0 {
								ms, per[i] = append(ms, per[i][0]), per[i][1:]
							}
						}
					}
					for i := range int(mode.dups * float64(len(ms))) {
						ms = append(ms, ms[rng.IntN(len(ms)-i)])
					}
					if mode.dups > 0 {
						// Duplicates land anywhere after a random point.
						rng.Shuffle(len(ms)/2, func(i, j int) {
							i, j = i+len(ms)/2, j+len(ms)/2
							ms[i], ms[j] = ms[j], ms[i]
						})
					}
					var batches [][]domain.MessageApplied
					for rest := ms; len(rest) > 0; {
						n := min(len(rest), 1+rng.IntN(mode.maxBatch))
						batches = append(batches, rest[:n])
						if mode.redeliver && rng.IntN(4) == 0 {
							batches = append(batches, rest[:n])
						}
						rest = rest[n:]
					}
					check := func() {
						requireOrdinals(t, db)
						for _, c := range convs {
							for range 4 {
								read := rng.Int64N(maxSeq[c.ID] + 2)
								for _, v := range []domain.Viewer{staff, {Principal: "patients/" + c.PatientID, IsPatient: true}} {
									setRead(t, db, c.ID, v.Principal, read)
									got, err := s.Get(ctx, "p1", c.ID, v)
									require.NoError(t, err)
									require.Equal(t, countUnread(t, db, c.ID, !v.IsPatient, read), got.UnreadCount,
										"viewer %s, read %d", v.Principal, read)
								}
							}
						}
						list, _, err := s.List(ctx, domain.ListQuery{Practice: "p1", Viewer: staff, Limit: 10})
						require.NoError(t, err)
						require.Len(t, list, len(convs))
						for _, c := range list {
							require.Equal(t, countUnread(t, db, c.ID, true, c.ReadSeq), c.UnreadCount)
						}
					}
					var wg sync.WaitGroup
					errs := make(chan error, mode.writers)
					for w := range mode.writers {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for i := w; i < len(batches); i += mode.writers {
								if _, err := s.ApplyMessages(ctx, batches[i], noEvents); err != nil {
									errs <- err
									return
								}
								if mode.writers == 1 && i%7 == 0 {
									check()
								}
							}
						}()
					}
					wg.Wait()
					close(errs)
					for err := range errs {
						require.NoError(t, err)
					}
					check()
				})
			}
		})
	}
}
