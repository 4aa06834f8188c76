package natsx_test

import (
	"context"
	"fmt"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkEventPipeline is the all-in-one's NATS work for one event: the
// embedded server (file store) and its in-process connection, an event
// published as the outbox relay does (a message id, asynchronously, up to
// 256 in flight) and handled by each of `consumers` durable ConsumeBatch
// consumers (an empty handler, acked per message). It reports the process's
// CPU per event and the messages that crossed the connection per event:
// the slope between consumer counts is what each consumer of an event costs.
//
//	go test ./services/platform/natsx -run '^$' -bench EventPipeline -benchtime 20000x
func BenchmarkEventPipeline(b *testing.B) {
	for _, consumers := range []int{0, 1, 2, 4} {
		b.Run(fmt.Sprintf("consumers=%d", consumers), func(b *testing.B) { benchPipeline(b, consumers, false) })
	}
	// The durables of a SoleConsumer (the all-in-one): a batch acked with
	// one message.
	for _, consumers := range []int{1, 4} {
		b.Run(fmt.Sprintf("consumers=%d/sole", consumers), func(b *testing.B) { benchPipeline(b, consumers, true) })
	}
}

func benchPipeline(b *testing.B, consumers int, sole bool) {
	nc, js := benchStreams(b, 30*time.Second)
	cjs := js
	if sole {
		cjs = natsx.SoleConsumer(js)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var handled atomic.Int64
	all := make(chan struct{})
	want := int64(consumers * b.N)
	h := func(_ context.Context, msgs []jetstream.Msg) []error {
		if handled.Add(int64(len(msgs))) == want {
			close(all)
		}
		return make([]error, len(msgs))
	}
	stopped := make(chan error, consumers)
	for i := range consumers {
		spec := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: fmt.Sprint("bench-", i),
			FilterSubjects: natsx.Filter(natsx.SubjectMessageCreated)}
		go func() { stopped <- natsx.ConsumeBatch(ctx, cjs, zap.NewNop(), spec, natsx.DefaultMaxBatch, h) }()
	}
	subject := natsx.Tenant(natsx.SubjectMessageCreated, "practice", "patients/p")
	payload := make([]byte, 200)
	st0, cpu0 := nc.Stats(), testkit.CPUTime()
	b.ResetTimer()
	for i := range b.N {
		msg := &nats.Msg{Subject: subject, Data: payload, Header: nats.Header{}}
		if _, err := js.PublishMsgAsync(msg, jetstream.WithMsgID(fmt.Sprint("event-", i))); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publish acks missing")
	}
	if consumers > 0 {
		select {
		case <-all:
		case <-time.After(time.Minute):
			b.Fatalf("handled %d of %d", handled.Load(), want)
		}
	}
	b.StopTimer()
	st1, cpu1 := nc.Stats(), testkit.CPUTime()
	n := float64(b.N)
	b.ReportMetric(float64((cpu1-cpu0).Microseconds())/n, "cpu-µs/event")
	b.ReportMetric(float64(st1.OutMsgs-st0.OutMsgs)/n, "out-msgs/event")
	b.ReportMetric(float64(st1.InMsgs-st0.InMsgs)/n, "in-msgs/event")
	cancel()
	for range consumers {
		<-stopped
	}
}

// benchStreams starts an embedded server (file store) with clinicchat's
// streams, their duplicate window set to window, and returns its
// in-process connection and a JetStream client that keeps up to 256
// publishes in flight, as the outbox relay does. Both stop when b ends.
func benchStreams(b *testing.B, window time.Duration) (*nats.Conn, jetstream.JetStream) {
	ns, nc, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: b.TempDir()}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nc.Close(); ns.Shutdown() })
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(256))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := natsx.EnsureStreams(ctx, js, natsx.StreamsConfig{DuplicateWindow: window}); err != nil {
		b.Fatal(err)
	}
	return nc, js
}

// BenchmarkCatchUp is a durable ConsumeBatch consumer of message.created
// catching up on a stream it is far behind (b.N created events of 1,000
// threads, each followed by two status echoes): the CPU per created event
// until it has handled them all, with the real consumers' filter sets as
// they were (before: both forms of every base, natsx.TenantGrace not yet
// passed) and as durable() now starts them (after: the pre-tenant forms
// narrowed away, natsx.Narrow; a multi-kind durable behind by more than
// natsx.CatchUpPending delivered everything until caught up). With two
// or more filter subjects the server finds a lagging consumer's next
// message by intersecting the block's subjects with the filter on every
// fetch (BENCHMARKS.md, js11 and filter11).
//
//	go test ./services/platform/natsx -run '^$' -bench CatchUp -benchtime 20000x
func BenchmarkCatchUp(b *testing.B) {
	created, updated := natsx.SubjectMessageCreated, natsx.SubjectMessageUpdated
	for _, f := range []struct {
		name   string
		filter []string
		after  bool // TenantGrace passed, CatchUpPending as set
	}{
		// the projection, attachment links, delivery's reads: one kind
		{"single/before", natsx.Filter(created), false},
		{"single/after", natsx.Filter(created), true},
		// the audit's durable of the delivery stream: every kind but the echo
		{"audit/before", natsx.Filter(created, updated, natsx.SubjectDeliveryAccess), false},
		{"audit/after", natsx.Filter(created, updated, natsx.SubjectDeliveryAccess), true},
		// the gateway hub's kinds of the delivery stream (its consumer is
		// ephemeral, created in gateway/hub.go, not by durable())
		{"hub/before", natsx.Filter(created, updated, natsx.SubjectMessageStatusEcho), false},
		{"hub/tenant-forms", []string{created + ".>", updated + ".>", natsx.SubjectMessageStatusEcho + ".>"}, false},
		{"hub/one-wildcard", []string{natsx.Prefix() + ".delivery.message.>"}, false},
		{"none", nil, false}, // every event delivered, the echoes dropped by the handler
	} {
		b.Run(f.name, func(b *testing.B) {
			grace, pending := natsx.TenantGrace, natsx.CatchUpPending
			defer func() { natsx.TenantGrace, natsx.CatchUpPending = grace, pending }()
			if f.after {
				natsx.TenantGrace = 0
			} else {
				natsx.CatchUpPending = math.MaxUint64
			}
			benchCatchUp(b, f.filter)
		})
	}
}

func benchCatchUp(b *testing.B, filter []string) {
	_, js := benchStreams(b, 30*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	payload := make([]byte, 200)
	for i := range b.N {
		thread := fmt.Sprint("patients/p", i%1000)
		for k, base := range []string{natsx.SubjectMessageCreated, natsx.SubjectMessageStatusEcho, natsx.SubjectMessageStatusEcho} {
			msg := &nats.Msg{Subject: natsx.Tenant(base, "practice", thread), Data: payload, Header: nats.Header{}}
			if _, err := js.PublishMsgAsync(msg, jetstream.WithMsgID(fmt.Sprint("event-", i, "-", k)), jetstream.WithStallWait(time.Minute)); err != nil {
				b.Fatal(err)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publish acks missing")
	}
	var handled atomic.Int64
	all := make(chan struct{})
	h := func(_ context.Context, msgs []jetstream.Msg) []error {
		created := 0
		for _, m := range msgs {
			if natsx.Base(m.Subject()) == natsx.SubjectMessageCreated {
				created++
			}
		}
		if created > 0 && handled.Add(int64(created)) == int64(b.N) {
			close(all)
		}
		return make([]error, len(msgs))
	}
	spec := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: "catch-up", FilterSubjects: filter}
	stopped := make(chan error, 1)
	cpu0 := testkit.CPUTime()
	b.ResetTimer()
	go func() { stopped <- natsx.ConsumeBatch(ctx, js, zap.NewNop(), spec, natsx.DefaultMaxBatch, h) }()
	select {
	case <-all:
	case <-time.After(5 * time.Minute):
		b.Fatalf("handled %d of %d", handled.Load(), b.N)
	}
	b.StopTimer()
	b.ReportMetric(float64((testkit.CPUTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/event")
	cancel()
	if err := <-stopped; err != nil {
		b.Fatal(err)
	}
}
