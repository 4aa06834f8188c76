package outbox_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// writeRows commits rows from..to-1 in one transaction, alternately on
// threads c0 and c1 of the delivery stream, their ids "ev-<i>".
func writeRows(t *testing.T, db *sqldb.DB, from, to int) {
	t.Helper()
	ctx := context.Background()
	var evs []outbox.Event
	for i := from; i < to; i++ {
		id, conv := fmt.Sprintf("ev-%04d", i), fmt.Sprintf("c%d", i%2)
		evs = append(evs, outbox.Event{ID: id, Subject: natsx.Tenant(natsx.SubjectDeliveryAccess, "p", conv),
			Msg: &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p", Resource: conv, Detail: fmt.Sprint(i)}}})
	}
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, evs) }))
}

// step runs one round of r: Flush on SQLite; on PostgreSQL a round that
// keeps the outbox lock (and with it the stream's last sequence), as Run's.
func step(ctx context.Context, db *sqldb.DB, r *outbox.Relay) (int, error) {
	if db.Dialect() == sqldb.Postgres {
		return outbox.Round(r, ctx)
	}
	return r.Flush(ctx)
}

// flushUntilEmpty runs rounds until one publishes nothing, giving up after 50
// rounds that fail.
func flushUntilEmpty(t *testing.T, ctx context.Context, db *sqldb.DB, r *outbox.Relay) {
	t.Helper()
	var last error
	for fails := 0; fails < 50; {
		n, err := step(ctx, db, r)
		if err != nil {
			last = err
			fails++
			continue
		}
		if n == 0 {
			return
		}
	}
	t.Fatalf("the relay does not get through: %v", last)
}

// requireOnceInOrder checks the delivery stream holds exactly rows 0..n-1,
// each once, in row order (so in order per thread).
func requireOnceInOrder(t *testing.T, ctx context.Context, js jetstream.JetStream, n int) {
	t.Helper()
	require.EqualValues(t, n, streamMsgs(t, ctx, js), "each event exactly once")
	for i, e := range read(t, ctx, js, n) {
		require.Equal(t, fmt.Sprintf("ev-%04d", i), e.GetMeta().GetId(), "stream position %d", i)
	}
}

// msgs is the server's count of messages in and out (the benchmarks' figures).
func msgs(t testing.TB, ns *server.Server) (in, out int64) {
	t.Helper()
	v, err := ns.Varz(nil)
	require.NoError(t, err)
	return v.InMsgs, v.OutMsgs
}

// connMsgs is what the relay's connection published and received: the
// client's own counts, each taken before the message is handed on (a
// reply is counted before the relay reads it), so a round's counts are
// complete when the round returns. (The server's counts were not: it counts
// a message it sent after its sending loop has written it, which may follow
// the relay's reading it, so a baseline taken right after a round could
// miss that round's last PubAck; it did under load and -race.)
func connMsgs(js jetstream.JetStream) (published, received uint64) {
	st := js.Conn().Stats()
	return st.OutMsgs, st.InMsgs
}

// requireConnMsgs checks what the relay's connection published and
// received since pub0 and recv0: pub publishes, and between recvMin and
// recvMax replies.
func requireConnMsgs(t *testing.T, js jetstream.JetStream, pub0, recv0, pub, recvMin, recvMax uint64) {
	t.Helper()
	p, r := connMsgs(js)
	if p-pub0 != pub || r-recv0 < recvMin || r-recv0 > recvMax {
		t.Fatalf("the relay's connection: published %d, received %d; want %d and %d-%d", p-pub0, r-recv0, pub, recvMin, recvMax)
	}
}

// A chained round publishes a stream's rows as one fast batch: one PubAck
// (and the server's flow message for the batch's first row) instead of one
// PubAck per row, with every row stored once, in order. Without batches
// the same round is answered row by row.
func TestRelayPublishesAChainedRoundAsOneFastBatch(t *testing.T) {
	for _, b := range testkit.Backends() {
		for _, batches := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/batches=%v", b.Name, batches), func(t *testing.T) {
				ctx := context.Background()
				_, _, js := testkit.NATS(t)
				db := openOutboxDB(t, b)
				relay := outbox.NewRelay(db, js, testkit.Logger(t))
				outbox.SetNoBatches(relay, !batches)
				writeRows(t, db, 0, 2)
				flushUntilEmpty(t, ctx, db, relay) // in waves: learns the stream's last sequence
				pub0, recv0 := connMsgs(js)
				acks0 := relay.Acks()
				_, waits0 := relay.Stats()
				writeRows(t, db, 2, 22)
				n, err := step(ctx, db, relay)
				require.NoError(t, err)
				require.Equal(t, 20, n)
				_, waits1 := relay.Stats()
				require.EqualValues(t, 1, waits1-waits0, "one wait for the round")
				if batches {
					require.EqualValues(t, 1, relay.Acks()-acks0, "PubAcks read")
					// The rows' publishes out; in the batch's PubAck and the
					// server's flow messages: one, or up to five while the
					// server still holds the previous round's batch (it then
					// ramps this one's flow from 1 row: 1, 2, 4, 8, 16;
					// nats-server fastBatchInit), as under -race.
					requireConnMsgs(t, js, pub0, recv0, 20, 2, 6)
				} else {
					require.EqualValues(t, 20, relay.Acks()-acks0, "PubAcks read")
					requireConnMsgs(t, js, pub0, recv0, 20, 20, 20) // a PubAck per row
				}
				flushUntilEmpty(t, ctx, db, relay)
				requireOnceInOrder(t, ctx, js, 22)
			})
		}
	}
}

// holdCommit publishes a relay's messages as they are (their reply
// subjects too: the server sees the fast batches), except, while armed, a
// batch's committing row (its reply subject ends ".2.$FI"), which it drops:
// the batch's other rows are stored and it is never answered, as when the
// relay's process dies (or the connection breaks) between a batch's rows
// and its commit.
type holdCommit struct {
	armed   atomic.Bool
	dropped atomic.Int32
	// after, when set, runs after the publish of every row of a batch
	// that is not its commit (k is its 1-based place), while armed.
	after func(k int)
}

func (h *holdCommit) publish(m *nats.Msg, nc *nats.Conn) error {
	if h.armed.Load() && strings.HasSuffix(m.Reply, ".$FI") {
		if strings.HasSuffix(m.Reply, ".2.$FI") {
			h.dropped.Add(1)
			return nil
		}
		if err := nc.PublishMsg(m); err != nil {
			return err
		}
		if h.after != nil {
			toks := strings.Split(m.Reply, ".")
			var k int
			_, _ = fmt.Sscan(toks[len(toks)-3], &k)
			h.after(k)
		}
		return nil
	}
	return nc.PublishMsg(m)
}

// A batch never committed (its last row lost) is never acknowledged: its
// round fails, and the rows it stored are published again, one by one, and
// dropped as duplicates: each row once, in order. The same holds for
// PostgreSQL, whose rounds the next holder may take.
func TestAbandonedFastBatchIsRepublishedAndStoredOnce(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			_, _, js := testkit.NATS(t)
			db := openOutboxDB(t, b)
			relay := outbox.NewRelay(db, js, testkit.Logger(t))
			relay.AckWait = 300 * time.Millisecond
			h := &holdCommit{}
			outbox.OnPublish(relay, h.publish)
			writeRows(t, db, 0, 2)
			flushUntilEmpty(t, ctx, db, relay)
			h.armed.Store(true)
			writeRows(t, db, 2, 12)
			_, err := step(ctx, db, relay)
			require.Error(t, err, "the batch is never acknowledged")
			require.EqualValues(t, 1, h.dropped.Load())
			require.EqualValues(t, 11, streamMsgs(t, ctx, js), "the batch's rows but its last are stored")
			h.armed.Store(false)
			writeRows(t, db, 12, 20)
			flushUntilEmpty(t, ctx, db, relay)
			requireOnceInOrder(t, ctx, js, 20)
		})
	}
}

// Another writer stored events on the stream behind the relay's back (a
// former PostgreSQL lock holder, a restarted process). One of the relay's
// own rows: the batch's copy is dropped as a duplicate and the rest of the
// batch stored behind it, each once. A foreign event: the batch's first row
// finds the stream past its expectation and is refused, and so is the rest
// of the batch (the server dropped it); the next round goes row by row.
func TestFastBatchBehindAnotherWriter(t *testing.T) {
	ctx := context.Background()
	_, _, js := testkit.NATS(t)
	db := openOutboxDB(t, testkit.Backends()[0])
	relay := outbox.NewRelay(db, js, testkit.Logger(t))
	other := func(id string) {
		t.Helper()
		m := nats.NewMsg(natsx.Tenant(natsx.SubjectDeliveryAccess, "p", "c0"))
		m.Header.Set(jetstream.MsgIDHeader, id)
		var err error
		m.Data, err = proto.Marshal(&typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p", Resource: "c0", Detail: "2"}})
		require.NoError(t, err)
		_, err = js.PublishMsg(ctx, m)
		require.NoError(t, err)
	}
	writeRows(t, db, 0, 2)
	flushUntilEmpty(t, ctx, db, relay)
	other("ev-0002") // row 2 reached the stream another way
	writeRows(t, db, 2, 10)
	acks0 := relay.Acks()
	n, err := step(ctx, db, relay)
	require.NoError(t, err)
	require.Equal(t, 8, n, "the batch, its first row already stored")
	require.EqualValues(t, 1, relay.Acks()-acks0, "one PubAck for the batch")
	requireOnceInOrder(t, ctx, js, 10)

	other("foreign")
	writeRows(t, db, 10, 20)
	n, err = step(ctx, db, relay)
	require.NoError(t, err, "refused as out of turn: not a failure")
	require.Zero(t, n, "nothing of the batch stored")
	require.EqualValues(t, 11, streamMsgs(t, ctx, js))
	flushUntilEmpty(t, ctx, db, relay)
	require.EqualValues(t, 21, streamMsgs(t, ctx, js), "each event exactly once")
	var ids []string
	for _, e := range read(t, ctx, js, 21) {
		if id := e.GetMeta().GetId(); id != "foreign" {
			ids = append(ids, id)
		}
	}
	for i, id := range ids {
		require.Equal(t, fmt.Sprintf("ev-%04d", i), id)
	}
}

// The NATS server stops in the middle of a batch (after its third row) and
// comes back on the same store: the relay's round fails, the rows the
// batch stored are published again and dropped as duplicates (the server
// rebuilds its duplicate window from the store), and every row is stored
// once, in order.
func TestServerRestartInTheMiddleOfAFastBatch(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ns := runNATS(-1, dir)
	port := ns.Addr().(*net.TCPAddr).Port
	t.Cleanup(func() { ns.Shutdown() })
	nc, err := nats.Connect(ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	require.NoError(t, natsx.EnsureStreams(ctx, js, natsx.StreamsConfig{}))
	db := openOutboxDB(t, testkit.Backends()[0])
	relay := outbox.NewRelay(db, js, testkit.Logger(t))
	relay.AckWait = 500 * time.Millisecond
	h := &holdCommit{}
	h.after = func(k int) {
		if k != 3 {
			return
		}
		h.armed.Store(false) // the rest goes out as it is (into the outage)
		require.NoError(t, nc.Flush())
		ns.Shutdown()
		ns.WaitForShutdown()
		ns = runNATS(port, dir)
	}
	outbox.OnPublish(relay, h.publish)
	writeRows(t, db, 0, 2)
	flushUntilEmpty(t, ctx, db, relay)
	h.armed.Store(true)
	writeRows(t, db, 2, 12)
	_, err = step(ctx, db, relay)
	require.Error(t, err, "the batch is not acknowledged")
	require.Eventually(t, nc.IsConnected, 10*time.Second, 10*time.Millisecond)
	writeRows(t, db, 12, 16)
	flushUntilEmpty(t, ctx, db, relay)
	requireOnceInOrder(t, ctx, js, 16)
}

// Streams made by a version without fast batches are upgraded in place by
// EnsureStreams (allow_batched set by a stream update, the events kept);
// until then, and whenever a stream refuses a batch (a process of an older
// version reconciled it), the relay publishes row by row: every row once,
// in order.
func TestOldStreamsAreUpgradedAndRefusedBatchesGoRowByRow(t *testing.T) {
	ctx := context.Background()
	_, _, js := testkit.NATS(t)
	// The streams as an older version declared them.
	for _, sc := range natsx.Streams(natsx.StreamsConfig{}) {
		sc.AllowBatchPublish = false
		_, err := js.UpdateStream(ctx, sc)
		require.NoError(t, err)
	}
	stream, err := js.Stream(ctx, natsx.StreamDelivery)
	require.NoError(t, err)
	require.False(t, stream.CachedInfo().Config.AllowBatchPublish)
	db := openOutboxDB(t, testkit.Backends()[0])
	relay := outbox.NewRelay(db, js, testkit.Logger(t))
	writeRows(t, db, 0, 2)
	flushUntilEmpty(t, ctx, db, relay)
	writeRows(t, db, 2, 10)
	n, err := step(ctx, db, relay)
	require.NoError(t, err, "a refused batch is not a failure")
	require.Zero(t, n, "the stream refuses the batch")
	flushUntilEmpty(t, ctx, db, relay)
	requireOnceInOrder(t, ctx, js, 10)
	// Now row by row (for a while): a PubAck per row.
	writeRows(t, db, 10, 20)
	flushUntilEmpty(t, ctx, db, relay) // waves after the refusal; then chained
	acks0 := relay.Acks()
	writeRows(t, db, 20, 30)
	flushUntilEmpty(t, ctx, db, relay)
	require.EqualValues(t, 10, relay.Acks()-acks0, "row by row")

	// The upgrade: EnsureStreams updates the existing streams.
	require.NoError(t, natsx.EnsureStreams(ctx, js, natsx.StreamsConfig{}))
	info, err := stream.Info(ctx)
	require.NoError(t, err)
	require.True(t, info.Config.AllowBatchPublish)
	require.EqualValues(t, 30, info.State.Msgs, "events kept")
	fresh := outbox.NewRelay(db, js, testkit.Logger(t))
	writeRows(t, db, 30, 32)
	flushUntilEmpty(t, ctx, db, fresh)
	acks0 = fresh.Acks()
	pub0, recv0 := connMsgs(js)
	writeRows(t, db, 32, 42)
	n, err = fresh.Flush(ctx)
	require.NoError(t, err)
	require.Equal(t, 10, n)
	require.EqualValues(t, 1, fresh.Acks()-acks0, "one PubAck for the batch")
	requireConnMsgs(t, js, pub0, recv0, 10, 2, 6) // the PubAck and the flow messages, as above
	requireOnceInOrder(t, ctx, js, 42)
}
