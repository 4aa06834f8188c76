package natsx_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	natstest "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// The lag collector reports the pending and unacknowledged messages of the
// service's durable consumers, and none of other services' or of ordered
// consumers.
func TestLagCollectorReportsDurablesOfTheService(t *testing.T) {
	ctx := context.Background()
	opts := natstest.DefaultTestOptions
	opts.Port, opts.JetStream, opts.StoreDir = -1, true, t.TempDir()
	ns := natstest.RunServer(&opts)
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	require.NoError(t, natsx.EnsureStreams(ctx, js, natsx.StreamsConfig{}))
	for i := range 5 {
		_, err := js.Publish(ctx, natsx.Tenant(natsx.SubjectDeliveryAccess, "p"), []byte(fmt.Sprint(i)))
		require.NoError(t, err)
	}
	for _, name := range []string{"audit-delivery", "conversation-projection"} {
		_, err := js.CreateOrUpdateConsumer(ctx, natsx.StreamDelivery, jetstream.ConsumerConfig{Durable: name, AckPolicy: jetstream.AckExplicitPolicy})
		require.NoError(t, err)
	}
	_, err = js.OrderedConsumer(ctx, natsx.StreamDelivery, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	// audit-delivery takes two and acknowledges one.
	cons, err := js.Consumer(ctx, natsx.StreamDelivery, "audit-delivery")
	require.NoError(t, err)
	batch, err := cons.FetchNoWait(2)
	require.NoError(t, err)
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	require.Len(t, msgs, 2)
	require.NoError(t, msgs[0].DoubleAck(ctx))

	reg := prometheus.NewRegistry()
	require.NoError(t, reg.Register(natsx.LagCollector(js, "audit-")))
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP clinicchat_nats_consumer_ack_pending_messages Messages delivered to the durable consumer and not yet acknowledged (JetStream num_ack_pending).
# TYPE clinicchat_nats_consumer_ack_pending_messages gauge
clinicchat_nats_consumer_ack_pending_messages{consumer="audit-delivery",stream="CLINICCHAT_DELIVERY"} 1
# HELP clinicchat_nats_consumer_pending_messages Messages of the stream not yet delivered to the durable consumer (JetStream num_pending, read at scrape): its lag.
# TYPE clinicchat_nats_consumer_pending_messages gauge
clinicchat_nats_consumer_pending_messages{consumer="audit-delivery",stream="CLINICCHAT_DELIVERY"} 3
`), "clinicchat_nats_consumer_pending_messages", "clinicchat_nats_consumer_ack_pending_messages"))

	all := prometheus.NewRegistry()
	require.NoError(t, all.Register(natsx.LagCollector(js, "")))
	n, err := testutil.GatherAndCount(all, "clinicchat_nats_consumer_pending_messages")
	require.NoError(t, err)
	require.Equal(t, 2, n, "every durable, and no ordered consumer")

	// A SoleConsumer's AckAll durable is reported under the name of the
	// explicit one it replaces; that one (left by a crash) is not.
	_, err = js.CreateOrUpdateConsumer(ctx, natsx.StreamDelivery, jetstream.ConsumerConfig{
		Durable: "conversation-projection" + natsx.AckAllSuffix, AckPolicy: jetstream.AckAllPolicy})
	require.NoError(t, err)
	cons, err = js.Consumer(ctx, natsx.StreamDelivery, "conversation-projection"+natsx.AckAllSuffix)
	require.NoError(t, err)
	batch, err = cons.FetchNoWait(5)
	require.NoError(t, err)
	msgs = msgs[:0]
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	require.Len(t, msgs, 5)
	require.NoError(t, msgs[3].DoubleAck(ctx)) // AckAll: the first four
	require.NoError(t, testutil.GatherAndCompare(all, strings.NewReader(`
# HELP clinicchat_nats_consumer_ack_pending_messages Messages delivered to the durable consumer and not yet acknowledged (JetStream num_ack_pending).
# TYPE clinicchat_nats_consumer_ack_pending_messages gauge
clinicchat_nats_consumer_ack_pending_messages{consumer="audit-delivery",stream="CLINICCHAT_DELIVERY"} 1
clinicchat_nats_consumer_ack_pending_messages{consumer="conversation-projection",stream="CLINICCHAT_DELIVERY"} 1
`), "clinicchat_nats_consumer_ack_pending_messages"))
}
