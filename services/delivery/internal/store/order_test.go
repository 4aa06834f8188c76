package store_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// Many senders at once into a few threads, through two replicas (two
// connection pools, each with its relay) of one PostgreSQL database: every
// thread's message events reach the stream once each, in seq order.
func TestConcurrentSendsReachTheStreamInSeqOrder(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, js := testkit.NATS(t)
	dsn := testkit.PostgresSchema(t)
	var dbs [2]*sqldb.DB
	var stores [2]*store.Store
	var runs errgroup.Group
	for i := range dbs {
		db, err := sqldb.Open(ctx, dsn)
		require.NoError(t, err)
		t.Cleanup(func() { _ = db.Close() })
		s, err := store.New(ctx, db)
		require.NoError(t, err)
		dbs[i], stores[i] = db, s
		r := outbox.NewRelay(db, js, testkit.Logger(t))
		r.Batch = 8
		runs.Go(func() error { return r.Run(ctx) })
	}

	const threads, senders, per = 2, 12, 30
	event := func(m domain.Message) []domain.Event {
		id := ids.New()
		return []domain.Event{{ID: id, Subject: natsx.Tenant(natsx.SubjectDeliveryAccess, "p1"),
			Msg: &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p1", Resource: m.ConversationID, Detail: strconv.FormatInt(m.Seq, 10)}}}}
	}
	var sends errgroup.Group
	for w := range senders {
		sends.Go(func() error {
			for i := range per {
				conv := fmt.Sprintf("c%d", (w+i)%threads)
				if _, _, err := stores[(w+i)%2].Send(ctx, msg(conv, "users/u1", ids.New(), "hi"), event); err != nil {
					return err
				}
			}
			return nil
		})
	}
	require.NoError(t, sends.Wait())

	want := senders * per
	stream, err := js.Stream(ctx, natsx.StreamDelivery)
	require.NoError(t, err)
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	next := map[string]int64{}
	var late []string
	for got := 0; got < want; {
		batch, err := cons.Fetch(want-got, jetstream.FetchMaxWait(10*time.Second))
		require.NoError(t, err)
		n := 0
		for m := range batch.Messages() {
			var e typev1.AccessRecorded
			require.NoError(t, proto.Unmarshal(m.Data(), &e))
			conv := e.GetMeta().GetResource()
			seq, err := strconv.ParseInt(e.GetMeta().GetDetail(), 10, 64)
			require.NoError(t, err)
			if seq != next[conv]+1 {
				late = append(late, fmt.Sprintf("%s: %d after %d", conv, seq, next[conv]))
			}
			next[conv] = max(next[conv], seq)
			n++
		}
		require.NoError(t, batch.Error())
		require.Positive(t, n, "no more events after %d of %d", got, want)
		got += n
	}
	require.Empty(t, late, "a thread's events out of seq order: %d", len(late))
	var total int64
	for _, n := range next {
		total += n
	}
	require.EqualValues(t, want, total)
	cancel()
	require.NoError(t, runs.Wait())
}
