package outbox_test

import (
	"context"
	"testing"
	"time"

	natstest "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// The outbox keeps the trace context of the transaction that wrote the
// event; the relay publishes it as the traceparent header of a publish span,
// child of that transaction's span, and a durable consumer's handler runs in
// a consumer span, child of the publish span. Without a traced context no
// row carries one and no header is written. The backlog counts the rows
// waiting and drops to zero once they are relayed.
func TestRelayCarriesTheTraceContextToConsumers(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	telemetry.Install(tp)
	t.Cleanup(func() { telemetry.Install(noop.NewTracerProvider()) })

	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			exp.Reset()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
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
			db := openOutboxDB(t, b)

			// A traced write and an untraced one.
			tctx, txSpan := telemetry.Tracer().Start(ctx, "send")
			write := func(ctx context.Context, id string) {
				require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
					return outbox.Add(ctx, tx, id, natsx.SubjectDeliveryAccess, &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p"}})
				}))
			}
			write(tctx, "traced")
			txSpan.End()
			write(ctx, "untraced")
			relay := outbox.NewRelay(db, js, testkit.Logger(t))
			n, oldest, err := relay.Backlog(ctx)
			require.NoError(t, err)
			require.EqualValues(t, 2, n, "both wait before the relay runs")
			require.False(t, oldest.IsZero())

			handled := make(chan trace.SpanContext, 2)
			go func() {
				_ = natsx.Consume(ctx, js, testkit.Logger(t), natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: "test-trace"},
					func(ctx context.Context, _ jetstream.Msg) error {
						handled <- trace.SpanContextFromContext(ctx)
						return nil
					})
			}()
			_, err = relay.Flush(ctx)
			require.NoError(t, err)
			n, oldest, err = relay.Backlog(ctx)
			require.NoError(t, err)
			require.Zero(t, n, "relayed")
			require.True(t, oldest.IsZero())

			var got []trace.SpanContext
			for range 2 {
				select {
				case sc := <-handled:
					got = append(got, sc)
				case <-time.After(10 * time.Second):
					t.Fatal("the consumer did not get both events")
				}
			}
			require.Equal(t, txSpan.SpanContext().TraceID(), got[0].TraceID(), "the traced event continues the writer's trace")
			require.False(t, got[1].IsValid(), "the untraced event starts no trace")

			stream, err := js.Stream(ctx, natsx.StreamDelivery)
			require.NoError(t, err)
			raw, err := stream.GetMsg(ctx, 2)
			require.NoError(t, err)
			require.Empty(t, raw.Header.Get(telemetry.HeaderTraceparent), "no header without a trace")

			// The consumer's span ends when the handler has returned, which
			// may be after the test has the event: wait for it to be exported.
			byName := map[string]tracetest.SpanStub{}
			require.Eventually(t, func() bool {
				for _, s := range exp.GetSpans() {
					byName[s.Name] = s
				}
				_, ok := byName["consume test-trace"]
				return ok
			}, 10*time.Second, 5*time.Millisecond, "the consumer's span ends")
			pub, cons := byName["publish clinicchat.delivery.access.recorded"], byName["consume test-trace"]
			require.Equal(t, trace.SpanKindProducer, pub.SpanKind)
			require.Equal(t, txSpan.SpanContext().SpanID(), pub.Parent.SpanID(), "publish is a child of the writer")
			require.Equal(t, trace.SpanKindConsumer, cons.SpanKind)
			require.Equal(t, pub.SpanContext.SpanID(), cons.Parent.SpanID(), "the consumer is a child of publish")
			require.Equal(t, got[0].SpanID(), cons.SpanContext.SpanID())
		})
	}
}
