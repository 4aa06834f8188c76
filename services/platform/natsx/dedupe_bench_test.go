package natsx_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkDuplicateWindow is what the streams' duplicate window costs per
// event id: the embedded server (file store) stores b.N events published
// as the outbox relay does (a message id each), keeps their ids for the
// window and then purges them. It reports the process's CPU per event for
// the publishes and, separately, for the purge of their ids once the
// window has passed (from the last publish until the server has forgotten
// the last id), and the heap each remembered id holds. The purge visits
// each id once whatever the window, so the window sets only how long the
// ids' memory is held (ids/s × window × heap-B/id), not the CPU per event.
//
//	go test ./services/platform/natsx -run '^$' -bench DuplicateWindow -benchtime 50000x
func BenchmarkDuplicateWindow(b *testing.B) {
	const window = 2 * time.Second
	_, js := benchStreams(b, window)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	subject := natsx.Tenant(natsx.SubjectMessageCreated, "practice", "patients/p")
	payload := make([]byte, 200)
	id := func(i int) string { return fmt.Sprintf("01JDBENCHEVENT%012d", i) } // ids.NewOrdered's length
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	cpu0 := testkit.CPUTime()
	b.ResetTimer()
	for i := range b.N {
		msg := &nats.Msg{Subject: subject, Data: payload, Header: nats.Header{}}
		if _, err := js.PublishMsgAsync(msg, jetstream.WithMsgID(id(i))); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		b.Fatal("publish acks missing")
	}
	b.StopTimer()
	cpu1, h1 := testkit.CPUTime(), heap()
	// The server has forgotten the last id once publishing it again stores
	// it (ids expire oldest first, all of them by then).
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for {
		a, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: payload, Header: nats.Header{}}, jetstream.WithMsgID(id(b.N-1)))
		if err != nil {
			b.Fatal(err)
		}
		if !a.Duplicate {
			break
		}
		select {
		case <-poll.C:
		case <-ctx.Done():
			b.Fatal("ids never purged")
		}
	}
	cpu2, h2 := testkit.CPUTime(), heap()
	n := float64(b.N)
	b.ReportMetric(float64((cpu1-cpu0).Microseconds())/n, "publish-cpu-µs/event")
	b.ReportMetric(float64((cpu2-cpu1).Microseconds())/n, "purge-cpu-µs/event")
	b.ReportMetric((float64(h1)-float64(h2))/n, "heap-B/id")
}
