package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// handoffEvents are n events of one subject, ids prefix-0…, in order.
func handoffEvents(prefix string, n int) []outbox.Event {
	evs := make([]outbox.Event, n)
	for i := range evs {
		id := fmt.Sprintf("%s-%d", prefix, i)
		evs[i] = outbox.Event{ID: id, Subject: natsx.Tenant(natsx.SubjectDeliveryAccess, "p", "c"),
			Msg: &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p", Detail: id}}}
	}
	return evs
}

// tableOrder is the ids of the outbox rows in seq order.
func tableOrder(t *testing.T, db *sqldb.DB) []string {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT id FROM outbox ORDER BY seq`)
	require.NoError(t, err)
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		ids = append(ids, id)
	}
	require.NoError(t, rows.Err())
	return ids
}

// flushAll flushes r until it has published n rows.
func flushAll(t *testing.T, r *outbox.Relay, n int) {
	t.Helper()
	for left := n; left > 0; {
		k, err := r.Flush(context.Background())
		require.NoError(t, err)
		require.Positive(t, k, "%d rows left", left)
		left -= k
	}
}

// idsOf is the events' ids.
func idsOf(events []*typev1.AccessRecorded) []string {
	ids := make([]string, len(events))
	for i, e := range events {
		ids[i] = e.GetMeta().GetId()
	}
	return ids
}

// On SQLite the relay publishes the rows their commits handed over without
// reading them back, exactly the committed ones in seq order: the rows of
// a write that rolled back (alone, or as a job of a group commit whose
// others committed, their seqs then taken again) never go out.
func TestHandedOverRowsArePublishedOnlyOnceCommitted(t *testing.T) {
	ctx := context.Background()
	_, _, js := testkit.NATS(t)
	db := openOutboxDB(t, testkit.Backends()[0])
	relay := outbox.NewRelay(db, js, testkit.Logger(t))
	n, err := relay.Flush(ctx) // reads the empty table: from now on the queue has every row
	require.NoError(t, err)
	require.Zero(t, n)

	committed := writeSomeRolledBack(ctx, t, db)

	flushAll(t, relay, len(committed))
	require.Zero(t, outbox.Loaded(relay), "every row came from the hand-off, none from the table")
	require.Equal(t, committed, idsOf(read(t, ctx, js, len(committed))), "exactly the committed rows, in seq order")
	require.EqualValues(t, len(committed), streamMsgs(t, ctx, js))
}

// A commit that finds the hand-off queue full is dropped from it, and the
// relay reads its rows from the table, in order after the queued ones.
func TestFullHandoffQueueFallsBackToTheTable(t *testing.T) {
	ctx := context.Background()
	_, _, js := testkit.NATS(t)
	db := openOutboxDB(t, testkit.Backends()[0])
	relay := outbox.NewRelay(db, js, testkit.Logger(t))
	outbox.SetHandoffRows(relay, 8)
	_, err := relay.Flush(ctx)
	require.NoError(t, err)

	for i := range 4 { // 5 rows each: the first commit is queued, the others find it full
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
			return outbox.AddAll(ctx, tx, handoffEvents(fmt.Sprintf("tx%d", i), 5))
		}))
	}
	committed := tableOrder(t, db)
	require.Len(t, committed, 20)
	flushAll(t, relay, 20)
	require.EqualValues(t, 15, outbox.Loaded(relay), "the queued commit from the queue, the dropped ones from the table")
	require.NoError(t, testutil.CollectAndCompare(relay.Collector("delivery"), strings.NewReader(`
# HELP clinicchat_outbox_read_events_total Events the relay read from the outbox table: on SQLite only those its commit did not hand over (after a restart, a gap, a full hand-off queue or a failed publish); on PostgreSQL those whose payload their commit did not hand over (another replica's, a restart's), and again after a failure.
# TYPE clinicchat_outbox_read_events_total counter
clinicchat_outbox_read_events_total{service="delivery"} 15
`), "clinicchat_outbox_read_events_total"))
	require.Equal(t, committed, idsOf(read(t, ctx, js, 20)))
	require.EqualValues(t, 20, streamMsgs(t, ctx, js))

	// Once the table is caught up, commits are taken from the queue again.
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, handoffEvents("after", 3)) }))
	flushAll(t, relay, 3)
	require.EqualValues(t, 15, outbox.Loaded(relay))
	require.EqualValues(t, 23, streamMsgs(t, ctx, js))
}

// Rows the queue never had (written before the relay started, or not by
// AddAll) are a gap in its seqs: the relay reads them from the table, and
// the rows queued behind them go out after them, in seq order, once.
func TestRelayKeepsSeqOrderAcrossTheTableAndTheHandoff(t *testing.T) {
	ctx := context.Background()
	_, _, js := testkit.NATS(t)
	db := openOutboxDB(t, testkit.Backends()[0])
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, handoffEvents("before", 2)) }))
	relay := outbox.NewRelay(db, js, testkit.Logger(t))
	relay.Batch = 8
	raw, err := proto.Marshal(&typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: "raw-0", Practice: "p"}})
	require.NoError(t, err)
	_, err = db.Exec(ctx, `INSERT INTO outbox (id, subject, payload, created_at) VALUES ('raw-0', ?, ?, 0)`,
		natsx.Tenant(natsx.SubjectDeliveryAccess, "p", "c"), raw)
	require.NoError(t, err)
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, handoffEvents("queued", 3)) }))

	flushAll(t, relay, 6) // the gap: all six from the table
	require.EqualValues(t, 6, outbox.Loaded(relay))
	// 40 events: three INSERTs, each handing over its rows with their seqs.
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, handoffEvents("later", 40)) }))
	flushAll(t, relay, 40) // the queue, past the three it also had
	require.EqualValues(t, 6, outbox.Loaded(relay))

	want := []string{"before-0", "before-1", "raw-0", "queued-0", "queued-1", "queued-2"}
	for _, e := range handoffEvents("later", 40) {
		want = append(want, e.ID)
	}
	require.Equal(t, want, idsOf(read(t, ctx, js, len(want))))
	require.EqualValues(t, len(want), streamMsgs(t, ctx, js), "each row once")
}

// The relay's remembered stream of a subject is natsx.StreamOf's, the
// second time too.
func TestRelayStreamOfIsNatsxStreamOf(t *testing.T) {
	relay := outbox.NewRelay(openOutboxDB(t, testkit.Backends()[0]), nil, testkit.Logger(t))
	subjects := []string{"", "clinicchat", "clinicchat.", "clinicchat.delivery", "other.delivery.x",
		"clinicchat.nosuchservice.x", natsx.SubjectDeliveryAccess, natsx.Tenant(natsx.SubjectDeliveryAccess, "p", "c1"),
		natsx.Tenant(natsx.SubjectDeliveryAccess, "p", "c2")}
	for range 2 {
		for _, s := range subjects {
			require.Equal(t, natsx.StreamOf(s), outbox.StreamOf(relay, s), s)
		}
	}
	require.Equal(t, natsx.StreamDelivery, outbox.StreamOf(relay, natsx.Tenant(natsx.SubjectDeliveryAccess, "p", "c3")))
}

// A running relay publishes what concurrent writers commit from the
// hand-off alone (its first read found the table empty, and no poll
// comes), each writer's events in their order, each once.
func TestRunningRelayPublishesFromTheHandoffInOrder(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, js := testkit.NATS(t)
	db := openOutboxDB(t, testkit.Backends()[0])
	relay := outbox.NewRelay(db, js, testkit.Logger(t))
	relay.Poll = time.Hour
	// A relay starts with a table read; here before the writes.
	_, err := relay.Flush(ctx)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()

	const writers, each = 4, 25
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				id := fmt.Sprintf("w%d-%02d", w, i)
				require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
					return outbox.Add(ctx, tx, id, natsx.Tenant(natsx.SubjectDeliveryAccess, "p", fmt.Sprintf("c%d", w)),
						&typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p", Resource: fmt.Sprint(w)}})
				}))
			}
		})
	}
	wg.Wait()
	events := read(t, ctx, js, writers*each)
	next := make([]int, writers)
	for _, e := range events {
		w, err := strconv.Atoi(e.GetMeta().GetResource())
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("w%d-%02d", w, next[w]), e.GetMeta().GetId(), "writer %d's events in order", w)
		next[w]++
	}
	require.EqualValues(t, writers*each, streamMsgs(t, ctx, js), "each event once")
	require.Zero(t, outbox.Loaded(relay), "no row read back from the table")
	cancel()
	require.NoError(t, <-done)
}

// On PostgreSQL a commit hands the relay its rows' payloads: the relay
// publishes them without reading the payloads back, the committed rows
// only (a write rolled back, alone or as a job of a group commit, hands
// nothing over), in seq order. A row whose payload it was not handed (a
// row another process wrote, here the second handle on the database) is
// read from the table with its payload, in the same round and order.
func TestPostgresRelayPublishesHandedOverPayloads(t *testing.T) {
	ctx := context.Background()
	_, _, js := testkit.NATS(t)
	db, other := openPostgresTwice(t)
	relay := outbox.NewRelay(db, js, testkit.Logger(t))
	committed := writeSomeRolledBack(ctx, t, db)

	flushAll(t, relay, len(committed))
	require.Zero(t, outbox.Loaded(relay), "every payload came from the hand-off, none from the table")
	got := read(t, ctx, js, len(committed))
	require.Equal(t, committed, idsOf(got), "exactly the committed rows, in seq order")
	for _, e := range got {
		require.Equal(t, e.GetMeta().GetId(), e.GetMeta().GetDetail(), "the event's own payload")
	}

	// Rows of another writer between handed-over ones.
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, handoffEvents("mine-a", 2)) }))
	require.NoError(t, other.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, handoffEvents("theirs", 2)) }))
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, handoffEvents("mine-b", 2)) }))
	order := tableOrder(t, db)
	flushAll(t, relay, len(order))
	require.EqualValues(t, 2, outbox.Loaded(relay), "only the other writer's payloads from the table")
	got = read(t, ctx, js, len(committed)+len(order))[len(committed):]
	require.Equal(t, order, idsOf(got))
	for _, e := range got {
		require.Equal(t, e.GetMeta().GetId(), e.GetMeta().GetDetail())
	}
	require.EqualValues(t, len(committed)+len(order), streamMsgs(t, ctx, js))
}

// writeSomeRolledBack writes outbox rows into db: one write rolled back
// alone, then 16 concurrent writes sharing group commits, every other one
// failing after writing its rows. It returns the committed rows' ids in
// the table's order (one per committed write).
func writeSomeRolledBack(ctx context.Context, t *testing.T, db *sqldb.DB) []string {
	t.Helper()
	boom := errors.New("boom")
	require.ErrorIs(t, db.Write(ctx, func(tx *sqldb.Tx) error {
		if err := outbox.AddAll(ctx, tx, handoffEvents("alone-rolled-back", 3)); err != nil {
			return err
		}
		return boom
	}), boom)
	var wg sync.WaitGroup
	const writers = 16
	for w := range writers {
		wg.Go(func() {
			err := db.Write(ctx, func(tx *sqldb.Tx) error {
				if err := outbox.AddAll(ctx, tx, handoffEvents(fmt.Sprintf("w%d", w), 2)); err != nil {
					return err
				}
				if w%2 == 1 {
					return boom
				}
				return nil
			})
			if w%2 == 1 {
				require.ErrorIs(t, err, boom)
			} else {
				require.NoError(t, err)
			}
		})
	}
	wg.Wait()
	committed := tableOrder(t, db)
	require.Len(t, committed, writers)
	return committed
}
