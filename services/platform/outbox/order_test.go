package outbox

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
)

// TestPublishNeverStoresARowBeforeTheOneAheadOfIt: when a row is not
// stored (here: no stream takes its subject, as when the stream's leader
// died with it), the rows after it in the same stream are refused, not
// stored ahead of it; sent again in order, all are stored once, in order.
func TestPublishNeverStoresARowBeforeTheOneAheadOfIt(t *testing.T) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	str, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T_SVC", Subjects: []string{"t.svc.a.>"}, Duplicates: time.Minute})
	require.NoError(t, err)
	r := &Relay{js: js, log: zap.NewNop()}

	rows := []row{
		{seq: 1, id: "r1", subject: "t.svc.a.1", payload: []byte("1")},
		{seq: 2, id: "r2", subject: "t.svc.lost.2", payload: []byte("2")}, // not stored
		{seq: 3, id: "r3", subject: "t.svc.a.3", payload: []byte("3")},
		{seq: 4, id: "r4", subject: "t.svc.a.4", payload: []byte("4")},
	}
	done, err := r.publish(ctx, rows)
	require.Error(t, err)
	require.Equal(t, []int64{1}, done)
	info, err := str.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, info.State.Msgs, "rows 3 and 4 must not be stored while row 2 is missing")

	// Row 2 "arrives" (its subject is taken now): everything goes in order.
	rows[1].subject = "t.svc.a.2"
	done, err = r.publish(ctx, rows)
	require.NoError(t, err)
	require.Equal(t, []int64{1, 2, 3, 4}, done)
	var got []string
	for seq := uint64(1); seq <= 4; seq++ {
		m, err := str.GetMsg(ctx, seq)
		require.NoError(t, err)
		got = append(got, string(m.Data))
	}
	require.Equal(t, []string{"1", "2", "3", "4"}, got, "row 1 deduplicated, then 2, 3, 4 in order")
	require.True(t, sameStream("p.delivery.message.created.x", "p.delivery.access.recorded"))
	require.False(t, sameStream("p.delivery.message.created", "p.conversation.conversation.created"))
}
