package natsx_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// batchRun is a ConsumeBatch run over batchN messages of one subject: the
// 8th is poison, the 101st (flaky) fails the first time it is handled.
type batchRun struct {
	mu       sync.Mutex
	got      []string // handled, in the order handled
	calls    map[string]int
	batches  int
	maxSeen  int // the largest batch
	flakySeq uint64
	stop     func() error // ends the run; ConsumeBatch's error
}

const batchN, batchMax = 300, 16

// runBatches publishes the run's messages and consumes them on durable
// (ConsumeBatch, batches of at most batchMax) until every one but the
// poison one is handled; onRetry runs, under the run's lock, when the
// flaky one is handled again.
func runBatches(t *testing.T, ctx context.Context, js jetstream.JetStream, durable string, onRetry func()) *batchRun {
	t.Helper()
	subject := natsx.SubjectMessageCreated + ".p.x"
	r := &batchRun{calls: map[string]int{}}
	for i := range batchN {
		data := fmt.Sprint(i)
		switch i {
		case 7:
			data = "poison"
		case 100:
			data = "flaky"
		}
		ack, err := js.Publish(ctx, subject, []byte(data))
		require.NoError(t, err)
		if data == "flaky" {
			r.flakySeq = ack.Sequence
		}
	}
	done := make(chan struct{})
	h := func(_ context.Context, msgs []jetstream.Msg) []error {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.batches++
		r.maxSeen = max(r.maxSeen, len(msgs))
		errs := make([]error, len(msgs))
		for i, m := range msgs {
			d := string(m.Data())
			r.calls[d]++
			switch {
			case d == "poison":
				errs[i] = fmt.Errorf("%w: undecodable", natsx.ErrPoison)
			case d == "flaky" && r.calls[d] == 1:
				errs[i] = errors.New("transient")
			default:
				if d == "flaky" && onRetry != nil {
					onRetry()
				}
				r.got = append(r.got, d)
			}
		}
		if len(r.got) == batchN-1 {
			close(done)
		}
		return errs
	}
	runCtx, stop := context.WithCancel(ctx)
	spec := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: durable, FilterSubjects: []string{subject}}
	finished := make(chan error, 1)
	go func() { finished <- natsx.ConsumeBatch(runCtx, js, testkit.Logger(t), spec, batchMax, h) }()
	r.stop = func() error { stop(); return <-finished }
	t.Cleanup(func() { stop() })
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("not every message was handled")
	}
	return r
}

// inOrder is what was handled but the flaky message, in the order handled.
func (r *batchRun) inOrder() []string {
	var out []string
	for _, d := range r.got {
		if d != "flaky" {
			out = append(out, d)
		}
	}
	return out
}

// ConsumeBatch hands over messages in stream order in batches of at most
// maxBatch; a poison message is terminated on its own, a failed one comes
// back, and every message ends acked.
func TestConsumeBatch(t *testing.T) {
	_, _, js := testkit.NATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := runBatches(t, ctx, js, "batch-test", nil)

	r.mu.Lock()
	require.Greater(t, r.maxSeen, 1, "messages waiting are handled together")
	require.LessOrEqual(t, r.maxSeen, batchMax)
	require.Equal(t, 1, r.calls["poison"], "a poison message is not redelivered")
	require.Equal(t, 2, r.calls["flaky"], "a failed message comes back once it fails no more")
	want := make([]string, 0, batchN-1)
	for i := range batchN {
		if i != 7 && i != 100 {
			want = append(want, fmt.Sprint(i))
		}
	}
	require.Equal(t, want, r.inOrder(), "stream order")
	r.mu.Unlock()

	cons, err := js.Consumer(ctx, natsx.StreamDelivery, "batch-test")
	require.NoError(t, err)
	require.Eventually(t, func() bool { // acks are sent without waiting for a reply
		info, err := cons.Info(ctx)
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0 && info.NumRedelivered == 0
	}, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, r.stop())
}
