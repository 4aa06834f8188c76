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

// ConsumeBatch hands over messages in stream order in batches of at most
// maxBatch; a poison message is terminated on its own, a failed one comes
// back, and every message ends acked.
func TestConsumeBatch(t *testing.T) {
	_, _, js := testkit.NATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n, maxBatch = 300, 16
	subject := natsx.SubjectMessageCreated + ".p.x"
	for i := range n {
		data := fmt.Sprint(i)
		switch i {
		case 7:
			data = "poison"
		case 100:
			data = "flaky"
		}
		_, err := js.Publish(ctx, subject, []byte(data))
		require.NoError(t, err)
	}

	var mu sync.Mutex
	var got []string
	calls := map[string]int{}
	maxSeen := 0
	done := make(chan struct{})
	h := func(_ context.Context, msgs []jetstream.Msg) []error {
		mu.Lock()
		defer mu.Unlock()
		maxSeen = max(maxSeen, len(msgs))
		errs := make([]error, len(msgs))
		for i, m := range msgs {
			d := string(m.Data())
			calls[d]++
			switch {
			case d == "poison":
				errs[i] = fmt.Errorf("%w: undecodable", natsx.ErrPoison)
			case d == "flaky" && calls[d] == 1:
				errs[i] = errors.New("transient")
			default:
				got = append(got, d)
			}
		}
		if len(got) == n-1 {
			close(done)
		}
		return errs
	}
	runCtx, stop := context.WithCancel(ctx)
	spec := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: "batch-test", FilterSubjects: []string{subject}}
	finished := make(chan error, 1)
	go func() { finished <- natsx.ConsumeBatch(runCtx, js, testkit.Logger(t), spec, maxBatch, h) }()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("not every message was handled")
	}

	mu.Lock()
	require.Greater(t, maxSeen, 1, "messages waiting are handled together")
	require.LessOrEqual(t, maxSeen, maxBatch)
	require.Equal(t, 1, calls["poison"], "a poison message is not redelivered")
	require.Equal(t, 2, calls["flaky"], "a failed message comes back once it fails no more")
	want := make([]string, 0, n-1)
	for i := range n {
		if i != 7 && i != 100 {
			want = append(want, fmt.Sprint(i))
		}
	}
	var inOrder []string
	for _, d := range got {
		if d != "flaky" {
			inOrder = append(inOrder, d)
		}
	}
	require.Equal(t, want, inOrder, "stream order")
	mu.Unlock()

	cons, err := js.Consumer(ctx, natsx.StreamDelivery, "batch-test")
	require.NoError(t, err)
	require.Eventually(t, func() bool { // acks are sent without waiting for a reply
		info, err := cons.Info(ctx)
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0 && info.NumRedelivered == 0
	}, 10*time.Second, 10*time.Millisecond)
	stop()
	require.NoError(t, <-finished)
}
