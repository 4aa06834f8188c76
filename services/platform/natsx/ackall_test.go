package natsx_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// A sole consumer's ConsumeBatch acks each batch with one message (AckAll):
// a poison message is covered, and a failed one holds back every ack
// after it until it has been handled, so nothing is acked unhandled.
func TestASoleConsumerAcksABatchOnceAndNothingPastAFailure(t *testing.T) {
	_, nc, plain := testkit.NATS(t)
	js := natsx.SoleConsumer(plain)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var acksMu sync.Mutex
	acks := map[string]int{}
	sub, err := nc.Subscribe("$JS.ACK."+natsx.StreamDelivery+".sole-test"+natsx.AckAllSuffix+".>", func(m *nats.Msg) {
		acksMu.Lock()
		defer acksMu.Unlock()
		acks[string(m.Data)]++
	})
	require.NoError(t, err)
	defer sub.Unsubscribe()

	var floorAtRetry uint64
	r := runBatches(t, ctx, js, "sole-test", func() {
		// Everything after it has been handled by now; none of it may be
		// acked while it is not.
		cons, err := plain.Consumer(ctx, natsx.StreamDelivery, "sole-test"+natsx.AckAllSuffix)
		require.NoError(t, err)
		floorAtRetry = cons.CachedInfo().AckFloor.Stream
	})

	r.mu.Lock()
	require.Equal(t, 1, r.calls["poison"], "a poison message is not redelivered")
	require.Equal(t, 2, r.calls["flaky"], "a failed message comes back once it fails no more")
	require.Less(t, floorAtRetry, r.flakySeq, "nothing at or past a failed message is acked before it is handled")
	inOrder := r.inOrder()
	require.Len(t, inOrder, batchN-2)
	for i, d := range inOrder[:7] {
		require.Equal(t, fmt.Sprint(i), d, "stream order")
	}
	nBatches := r.batches
	r.mu.Unlock()

	_, err = plain.Consumer(ctx, natsx.StreamDelivery, "sole-test")
	require.ErrorIs(t, err, jetstream.ErrConsumerNotFound, "no explicitly acked durable")
	cons, err := plain.Consumer(ctx, natsx.StreamDelivery, "sole-test"+natsx.AckAllSuffix)
	require.NoError(t, err)
	require.Equal(t, jetstream.AckAllPolicy, cons.CachedInfo().Config.AckPolicy)
	require.Eventually(t, func() bool { // acks are sent without waiting for a reply
		info, err := cons.Info(ctx)
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0 && info.AckFloor.Stream == uint64(batchN)
	}, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, r.stop())
	acksMu.Lock()
	defer acksMu.Unlock()
	total := 0
	for _, c := range acks {
		total += c
	}
	require.Equal(t, 1, countPrefix(acks, "-NAK"), "the failure's nak")
	require.LessOrEqual(t, total-1, nBatches, "at most one ack per batch")
	require.Less(t, total, batchN/4)
}

func countPrefix(m map[string]int, prefix string) int {
	c := 0
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			c += v
		}
	}
	return c
}

// collect is a BatchHandler recording what it is handed; seen is closed
// once every one of want has been.
type collect struct {
	mu   sync.Mutex
	got  map[string]int
	want map[string]bool
	seen chan struct{}
}

func newCollect(want ...string) *collect {
	c := &collect{got: map[string]int{}, want: map[string]bool{}, seen: make(chan struct{})}
	for _, w := range want {
		c.want[w] = true
	}
	return c
}

func (c *collect) handle(_ context.Context, msgs []jetstream.Msg) []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range msgs {
		d := string(m.Data())
		c.got[d]++
		if c.want[d] {
			delete(c.want, d)
			if len(c.want) == 0 {
				close(c.seen)
			}
		}
	}
	return make([]error, len(msgs))
}

// run runs ConsumeBatch with c until every wanted event was handled and the
// durable has acked them all (up to floor), then stops it.
func (c *collect) run(t *testing.T, js jetstream.JetStream, spec natsx.ConsumerSpec, name string, floor uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	finished := make(chan error, 1)
	go func() { finished <- natsx.ConsumeBatch(runCtx, js, testkit.Logger(t), spec, 8, c.handle) }()
	select {
	case <-c.seen:
	case <-ctx.Done():
		c.mu.Lock()
		t.Fatalf("still not handled: %v", c.want)
	}
	require.Eventually(t, func() bool {
		cons, err := js.Consumer(ctx, spec.Stream, name)
		return err == nil && cons.CachedInfo().AckFloor.Stream == floor && cons.CachedInfo().NumAckPending == 0
	}, 10*time.Second, 10*time.Millisecond)
	stop()
	require.NoError(t, <-finished)
}

func events(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprint(i))
	}
	return out
}

func publishEvents(t *testing.T, js jetstream.JetStream, subject string, from, to int) {
	t.Helper()
	for _, d := range events(from, to) {
		_, err := js.Publish(context.Background(), subject, []byte(d))
		require.NoError(t, err)
	}
}

// A sole consumer's run that ended with deliveries unacknowledged (a
// crash: handed over, never acked nor naked) leaves them pending; the
// next run must hand them over before it acks anything after them (its
// first ack would ack them too), not only once their AckWait (30 s) ends.
func TestASoleConsumerRestartedHandlesWhatItsLastRunLeftUnacked(t *testing.T) {
	_, _, plain := testkit.NATS(t)
	js := natsx.SoleConsumer(plain)
	subject := natsx.SubjectMessageCreated + ".p.x"
	spec := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: "crash", FilterSubjects: []string{subject}}
	name := "crash" + natsx.AckAllSuffix
	publishEvents(t, js, subject, 0, 10)
	newCollect(events(0, 10)...).run(t, js, spec, name, 10)

	// A run that crashed: 10..14 delivered, never settled.
	publishEvents(t, js, subject, 10, 20)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := plain.Consumer(ctx, natsx.StreamDelivery, name)
	require.NoError(t, err)
	// Fetch, not FetchNoWait: a no-wait request can reach the consumer
	// before it has taken in the events just published, and get none.
	batch, err := cons.Fetch(5, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	n := 0
	for range batch.Messages() {
		n++
	}
	require.Equal(t, 5, n)
	publishEvents(t, js, subject, 20, 30)

	c := newCollect(events(10, 30)...)
	c.run(t, js, spec, name, 30)
	for _, d := range events(0, 10) {
		require.Zero(t, c.got[d], "acked by the first run: not again")
	}
}

// The upgrade: today's explicitly acked durable, left mid-stream (acked
// up to a floor, deliveries past it unacknowledged), is replaced by the
// AckAll durable starting at its ack floor + 1; it is deleted, every
// event past the floor is handled, none before it again. A start that
// finds both (a crash between the two steps) deletes the old one and
// goes on from the new one's position.
func TestASoleConsumerTakesOverTheExplicitDurableFromItsAckFloor(t *testing.T) {
	_, _, plain := testkit.NATS(t)
	subject := natsx.SubjectMessageCreated + ".p.x"
	spec := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: "upgrade", FilterSubjects: []string{subject}}
	publishEvents(t, plain, subject, 0, 20)
	newCollect(events(0, 20)...).run(t, plain, spec, "upgrade", 20) // today's main: explicit acks

	publishEvents(t, plain, subject, 20, 30)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old, err := plain.Consumer(ctx, natsx.StreamDelivery, "upgrade")
	require.NoError(t, err)
	require.Equal(t, jetstream.AckExplicitPolicy, old.CachedInfo().Config.AckPolicy)
	batch, err := old.Fetch(4, jetstream.FetchMaxWait(5*time.Second)) // 20..23 delivered, unacked
	require.NoError(t, err)
	for m := range batch.Messages() {
		if string(m.Data()) == "21" {
			require.NoError(t, m.Ack()) // acked past the floor: handled again (idempotent)
		}
	}
	publishEvents(t, plain, subject, 30, 40)

	js := natsx.SoleConsumer(plain)
	name := "upgrade" + natsx.AckAllSuffix
	c := newCollect(events(20, 40)...)
	c.run(t, js, spec, name, 40)
	for _, d := range events(0, 20) {
		require.Zero(t, c.got[d], "handled before the upgrade: not again")
	}
	_, err = plain.Consumer(ctx, natsx.StreamDelivery, "upgrade")
	require.ErrorIs(t, err, jetstream.ErrConsumerNotFound, "the explicit durable is gone")

	// Both left (a crash after the new one was created): the old one goes,
	// the new one keeps its position.
	_, err = plain.CreateConsumer(ctx, natsx.StreamDelivery, jetstream.ConsumerConfig{
		Durable: "upgrade", AckPolicy: jetstream.AckExplicitPolicy, FilterSubjects: []string{subject},
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: 21})
	require.NoError(t, err)
	publishEvents(t, plain, subject, 40, 45)
	c = newCollect(events(40, 45)...)
	c.run(t, js, spec, name, 45)
	require.Len(t, c.got, 5, "only the new events: %v", c.got)
	_, err = plain.Consumer(ctx, natsx.StreamDelivery, "upgrade")
	require.ErrorIs(t, err, jetstream.ErrConsumerNotFound)
}
