package store_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net/url"
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

// change is what a receipt's event reports of a message.
type change struct {
	Receipt               int
	Conv                  string
	Seq                   int64
	Status                domain.Status
	ReadBy                string
	DeliverTime, ReadTime int64
}

// AdvanceAll over batches in no particular order — receipts of many
// threads, several of one thread and side (other readers, lower and higher
// watermarks), stale ones below the marks, beyond the last message,
// DELIVERED and READ mixed — changes the same messages, with the same
// events in the same order, and leaves the same marks as Advance of each
// receipt one after another; no status and no mark ever falls.
func TestAdvanceAllIsAdvanceInOrder(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			batched, bdb := openStore(t, b)
			single, sdb := openStore(t, b)
			rnd := rand.New(rand.NewPCG(10, 11))
			const threads = 6
			base := time.Date(2026, 12, 1, 6, 0, 0, 0, time.UTC)
			n := 0
			send := func() {
				conv := fmt.Sprint("c", rnd.IntN(threads))
				sender := "users/u1"
				if rnd.IntN(2) == 0 {
					sender = "patients/pat"
				}
				m := msg(conv, sender, ids.New(), "x")
				m.CreateTime = base.Add(time.Duration(n) * time.Second)
				n++
				for _, s := range []*store.Store{batched, single} {
					_, _, err := s.Send(ctx, m, oneEvent)
					require.NoError(t, err)
				}
			}
			for range 30 {
				send()
			}
			record := func(to *[]change, i int, ms []domain.Message) {
				for _, m := range ms {
					*to = append(*to, change{i, m.ConversationID, m.Seq, m.Status, m.ReadBy,
						sqldb.Micros(m.DeliverTime), sqldb.Micros(m.ReadTime)})
				}
			}
			at := 0
			for round := range 12 {
				as := make([]domain.Advance, 5+rnd.IntN(40))
				for i := range as {
					patient := rnd.IntN(2) == 0
					reader := fmt.Sprint("users/u", 1+rnd.IntN(2))
					if patient {
						reader = "patients/pat"
					}
					to := domain.Read
					if rnd.IntN(3) == 0 {
						to = domain.Delivered
					}
					at++
					as[i] = domain.Advance{Practice: "p1", ConversationID: fmt.Sprint("c", rnd.IntN(threads)),
						ReaderIsPatient: patient, Reader: reader, UpTo: int64(rnd.IntN(3 + 3*round)), To: to,
						At: base.Add(time.Duration(at) * time.Millisecond)}
				}
				before := state(t, bdb)
				var got, want []change
				require.NoError(t, batched.AdvanceAll(ctx, as, func(a domain.Advance, ms []domain.Message) []domain.Event {
					record(&got, indexOf(as, a), ms)
					return oneEvent(ms[0])
				}))
				for i, a := range as {
					_, err := single.Advance(ctx, a, func(ms []domain.Message) []domain.Event {
						record(&want, i, ms)
						return oneEvent(ms[0])
					})
					require.NoError(t, err)
				}
				require.Equal(t, want, got, "round %d", round)
				after := state(t, bdb)
				require.Equal(t, state(t, sdb), after, "round %d", round)
				for k, v := range before {
					require.GreaterOrEqual(t, after[k], v, "round %d: %s fell", round, k)
				}
				for range 3 {
					send()
				}
			}
		})
	}
}

// indexOf is the index of a in as (every receipt of the test has its own time).
func indexOf(as []domain.Advance, a domain.Advance) int {
	for i := range as {
		if as[i] == a {
			return i
		}
	}
	return -1
}

// state is every message's status and every mark, by name.
func state(t *testing.T, db *sqldb.DB) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	out := map[string]int64{}
	rows, err := db.Query(ctx, `SELECT conversation_id, seq, status FROM messages`)
	require.NoError(t, err)
	for rows.Next() {
		var conv string
		var seq, status int64
		require.NoError(t, rows.Scan(&conv, &seq, &status))
		out[fmt.Sprintf("status %s/%d", conv, seq)] = status
	}
	require.NoError(t, rows.Err())
	rows, err = db.Query(ctx, `SELECT conversation_id, from_patient, delivered_seq, read_seq FROM receipt_marks`)
	require.NoError(t, err)
	for rows.Next() {
		var conv string
		var from bool
		var d, r int64
		require.NoError(t, rows.Scan(&conv, &from, &d, &r))
		out[fmt.Sprintf("delivered mark %s/%v", conv, from)] = d
		out[fmt.Sprintf("read mark %s/%v", conv, from)] = r
	}
	require.NoError(t, rows.Err())
	return out
}

// Two batches over the same threads, given in opposite orders, both
// blocked behind a third transaction's lock on the first thread's message:
// released at once, they lock the messages in one order, so neither holds
// a row the other waits for. They run on plain transactions, which do not
// retry: a deadlock (40P01) would fail the test. Every message turns READ
// once, in one of the two.
func TestConcurrentBatchesDoNotDeadlock(t *testing.T) {
	ctx := context.Background()
	dsn := testkit.PostgresSchema(t) // skips without PostgreSQL
	db, err := sqldb.Open(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	s, err := store.New(ctx, db)
	require.NoError(t, err)
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	app := "dlk_" + ids.New()
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	raw, err := sql.Open("pgx", u.String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = raw.Close() })

	const threads = 8
	for round := range 5 {
		for i := range threads {
			for range 2 {
				_, _, err := s.Send(ctx, msg(fmt.Sprint("c", i), "users/u1", ids.New(), "x"), oneEvent)
				require.NoError(t, err)
			}
		}
		upTo := int64(2 * (round + 1))
		batch := func(reversed bool) []domain.Advance {
			as := make([]domain.Advance, threads)
			for i := range as {
				c := i
				if reversed {
					c = threads - 1 - i
				}
				as[i] = domain.Advance{Practice: "p1", ConversationID: fmt.Sprint("c", c), ReaderIsPatient: true,
					Reader: "patients/pat", UpTo: upTo, To: domain.Read, At: time.Now().UTC()}
			}
			return as
		}
		holder, err := raw.BeginTx(ctx, nil)
		require.NoError(t, err)
		_, err = holder.ExecContext(ctx, `SELECT 1 FROM messages WHERE practice = 'p1' AND conversation_id = 'c0' AND seq = $1 FOR UPDATE`, upTo)
		require.NoError(t, err)

		var g errgroup.Group
		changed := make([][][]domain.Message, 2)
		for k, reversed := range []bool{true, false} {
			g.Go(func() error {
				tx, err := raw.BeginTx(ctx, nil)
				if err != nil {
					return err
				}
				if changed[k], err = store.AdvancePostgres(ctx, tx, batch(reversed)); err != nil {
					_ = tx.Rollback()
					return err
				}
				return tx.Commit()
			})
		}
		// Both batches wait for the holder's lock before it lets go.
		require.Eventually(t, func() bool {
			var waiting int
			err := raw.QueryRowContext(ctx, `SELECT COUNT(*) FROM pg_stat_activity
				WHERE application_name = $1 AND wait_event_type = 'Lock'`, app).Scan(&waiting)
			return err == nil && waiting == 2
		}, 10*time.Second, 5*time.Millisecond)
		require.NoError(t, holder.Rollback())
		require.NoError(t, g.Wait(), "round %d", round)

		seen := map[string]int{}
		for _, batch := range changed {
			for _, ms := range batch {
				for _, m := range ms {
					require.Equal(t, domain.Read, m.Status)
					seen[fmt.Sprintf("%s/%d", m.ConversationID, m.Seq)]++
				}
			}
		}
		require.Len(t, seen, 2*threads, "round %d: each thread's two new messages", round)
		for k, n := range seen {
			require.Equal(t, 1, n, "round %d: %s changed once", round, k)
		}
		var marks int
		require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM receipt_marks WHERE read_seq = ? AND delivered_seq = ?`, upTo, upTo).Scan(&marks))
		require.Equal(t, threads, marks)
	}
}
