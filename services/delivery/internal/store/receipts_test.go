package store_test

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// A receipt write on PostgreSQL waits for the one in flight to commit
// before it starts: it never waits inside a group-commit lane for the mark
// row (here a new one) another lane's receipt batch holds. The first batch is
// held open inside its transaction (after its statement: the mark row and
// the messages it changed are locked); the second, of the same thread and
// side, waits in the store, and no session of the database waits for a
// lock. Released, both commit: each message changes once, the marks end at
// the highest of their receipts.
func TestReceiptWritesDoNotWaitForEachOthersLocks(t *testing.T) {
	ctx := context.Background()
	// Its own application_name: other tests' sessions on the server may
	// wait for locks of their own.
	u, err := url.Parse(testkit.PostgresSchema(t)) // skips without PostgreSQL
	require.NoError(t, err)
	app := "rcpt_" + ids.New()
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	db, err := sqldb.Open(ctx, u.String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	s, err := store.New(ctx, db)
	require.NoError(t, err)
	for range 3 {
		_, _, err = s.Send(ctx, msg("c1", "users/u1", ids.New(), "x"), oneEvent)
		require.NoError(t, err)
	}
	receipt := func(upTo int64, to domain.Status) domain.Advance {
		return domain.Advance{Practice: "p1", ConversationID: "c1", ReaderIsPatient: true, Reader: "patients/pat",
			UpTo: upTo, To: to, At: time.Now().UTC().Truncate(time.Microsecond)}
	}
	inside, release := make(chan struct{}), make(chan struct{})
	var once, released sync.Once
	let := func() { released.Do(func() { close(release) }) }
	defer let() // a failed check still lets the first write end
	var mu sync.Mutex
	changed := map[string]int{}
	record := func(ms []domain.Message) {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range ms {
			changed[fmt.Sprintf("%d %v", m.Seq, m.Status)]++
		}
	}
	var g errgroup.Group
	g.Go(func() error {
		return s.AdvanceAll(ctx, []domain.Advance{receipt(2, domain.Read)}, func(_ domain.Advance, ms []domain.Message) []domain.Event {
			once.Do(func() { close(inside) })
			<-release
			record(ms)
			return oneEvent(ms[0])
		})
	})
	<-inside
	g.Go(func() error {
		return s.MarkDelivered(ctx, 0, []domain.Advance{receipt(3, domain.Delivered)}, func(_ domain.Advance, ms []domain.Message) []domain.Event {
			record(ms)
			return oneEvent(ms[0])
		})
	})
	require.Eventually(t, func() bool { return store.ReceiptsWaiting(s) == 1 }, 10*time.Second, time.Millisecond,
		"the second receipt write waits for the first's commit in the store")
	var sessions, waiting int
	require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*), COUNT(*) FILTER (WHERE wait_event_type = 'Lock')
		FROM pg_stat_activity WHERE application_name = ?`, app).Scan(&sessions, &waiting))
	require.Positive(t, sessions, "the store's sessions carry the test's application_name")
	require.Zero(t, waiting, "no session of the store waits for a lock")
	let()
	require.NoError(t, g.Wait())
	require.Equal(t, map[string]int{"1 3": 1, "2 3": 1, "3 2": 1}, changed, "messages 1-2 READ by the first, 3 DELIVERED by the second")
	var d, r int64
	require.NoError(t, db.QueryRow(ctx, `SELECT delivered_seq, read_seq FROM receipt_marks
		WHERE practice = 'p1' AND conversation_id = 'c1' AND from_patient = ?`, false).Scan(&d, &r))
	require.EqualValues(t, 3, d)
	require.EqualValues(t, 2, r)
	require.Zero(t, store.ReceiptsWaiting(s))
}

// Receipt writes racing with sends over fresh threads (the first receipt
// of a thread inserts its mark row), DELIVERED batches and READ batches at
// once: every message ends at the status of the highest receipt that
// covered it, changes at most once to each status (one event each), and no
// mark ever falls or passes its thread's last message.
func TestConcurrentReceiptWritesKeepTheirGuarantees(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			s, db := openStore(t, b)
			const threads, perThread = 6, 12
			var mu sync.Mutex
			events := map[string]int{}
			evs := func(_ domain.Advance, ms []domain.Message) []domain.Event {
				mu.Lock()
				defer mu.Unlock()
				for _, m := range ms {
					events[fmt.Sprintf("%s/%d %v", m.ConversationID, m.Seq, m.Status)]++
				}
				return oneEvent(ms[0])
			}
			var g errgroup.Group
			for c := range threads {
				g.Go(func() error {
					for range perThread {
						if _, _, err := s.Send(ctx, msg(fmt.Sprint("c", c), "users/u1", ids.New(), "x"), oneEvent); err != nil {
							return err
						}
					}
					return nil
				})
			}
			receipts := func(to domain.Status, write func([]domain.Advance) error) {
				g.Go(func() error {
					for upTo := int64(1); upTo <= perThread; upTo++ {
						as := make([]domain.Advance, threads)
						for c := range as {
							as[c] = domain.Advance{Practice: "p1", ConversationID: fmt.Sprint("c", c), ReaderIsPatient: true,
								Reader: "patients/pat", UpTo: upTo, To: to, At: time.Now().UTC()}
						}
						if err := write(as); err != nil {
							return err
						}
					}
					return nil
				})
			}
			for range 2 {
				receipts(domain.Delivered, func(as []domain.Advance) error { return s.MarkDelivered(ctx, 0, as, evs) })
			}
			receipts(domain.Read, func(as []domain.Advance) error { return s.AdvanceAll(ctx, as, evs) })
			seen := map[string]int64{} // every status and mark, as last read
			done := make(chan error, 1)
			go func() { done <- g.Wait() }()
			for watching := true; watching; {
				select {
				case err := <-done:
					require.NoError(t, err)
					watching = false
				default:
				}
				now := state(t, db)
				for k, v := range now {
					require.GreaterOrEqual(t, v, seen[k], "%s fell", k)
					seen[k] = v
				}
			}
			// The receipts may have run ahead of the sends: READ up to the
			// last message again, now that every message is in.
			final := make([]domain.Advance, threads)
			for c := range final {
				final[c] = domain.Advance{Practice: "p1", ConversationID: fmt.Sprint("c", c), ReaderIsPatient: true,
					Reader: "patients/pat", UpTo: perThread, To: domain.Read, At: time.Now().UTC()}
			}
			require.NoError(t, s.AdvanceAll(ctx, final, evs))
			end := state(t, db)
			for c := range threads {
				for seq := 1; seq <= perThread; seq++ {
					require.EqualValues(t, domain.Read, end[fmt.Sprintf("status c%d/%d", c, seq)])
					k := fmt.Sprintf("c%d/%d %v", c, seq, domain.Read)
					require.Equal(t, 1, events[k], "%s: one READ event", k)
					require.LessOrEqual(t, events[fmt.Sprintf("c%d/%d %v", c, seq, domain.Delivered)], 1)
				}
				require.EqualValues(t, perThread, end[fmt.Sprintf("read mark c%d/false", c)])
				require.EqualValues(t, perThread, end[fmt.Sprintf("delivered mark c%d/false", c)])
			}
		})
	}
}
