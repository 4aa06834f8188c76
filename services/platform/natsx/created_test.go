package natsx_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// consumeUntil runs natsx.Consume with spec until it has handled want
// events and every one is acked, and returns their payloads and the
// durable's filter while it ran.
func consumeUntil(t *testing.T, js jetstream.JetStream, spec natsx.ConsumerSpec, want int) ([]string, []string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var got []string
	enough := make(chan struct{})
	stopped := make(chan error, 1)
	go func() {
		stopped <- natsx.Consume(ctx, js, zap.NewNop(), spec, func(_ context.Context, m jetstream.Msg) error {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, string(m.Data()))
			if len(got) == want {
				close(enough)
			}
			return nil
		})
	}()
	select {
	case <-enough:
	case <-time.After(10 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("%s handled %v, want %d events", spec.Durable, got, want)
	}
	cons, err := js.Consumer(ctx, spec.Stream, spec.Durable)
	require.NoError(t, err)
	cfg := cons.CachedInfo().Config
	filter := cfg.FilterSubjects
	if cfg.FilterSubject != "" {
		filter = []string{cfg.FilterSubject}
	}
	require.Eventually(t, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumAckPending == 0
	}, 10*time.Second, 5*time.Millisecond, "every handled event acked")
	cancel()
	require.NoError(t, <-stopped)
	mu.Lock()
	defer mu.Unlock()
	return got, filter
}

// A message without attachments is published with natsx.NoAttachments
// after its thread's tokens; one with attachments on the subject every
// message had before. The attachment service's durable, created by an
// earlier version on every message.created (natsx.Filter), is updated in
// place at the upgrade to the subjects that may carry attachments: it goes
// on from its ack floor, still reads what older versions published after
// it (their outbox rows relayed after the upgrade, both forms), and is no
// longer delivered the marked events. Every other consumer of the kind
// (natsx.Filter) still reads every event.
func TestTheLinksDurableOfAnEarlierVersionSkipsMessagesWithoutAttachments(t *testing.T) {
	js := embeddedStreams(t)
	graceFor(t, time.Hour) // a fresh upgrade: the pre-tenant form stays
	created := natsx.SubjectMessageCreated
	tenant := natsx.Tenant(created, "p", "patients/a")
	before := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: "links", FilterSubjects: natsx.Filter(created)}
	after := before
	after.FilterSubjects = natsx.CreatedWithAttachments()
	all := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: "projection", FilterSubjects: natsx.Filter(created)}

	require.Equal(t, tenant, natsx.CreatedSubject(tenant, true))
	require.Equal(t, tenant+".n", natsx.CreatedSubject(tenant, false))

	// Today's main: every message on the thread's subject (and one
	// pre-tenant event of an older outbox), consumed by the old filter.
	publish(t, js, tenant, "o1")
	publish(t, js, created, "o2")
	got, _ := consumeUntil(t, js, before, 2)
	require.Equal(t, []string{"o1", "o2"}, got)

	// The upgrade: the old version's last outbox rows are relayed on their
	// old subjects, then the new version marks what has no attachments.
	publish(t, js, tenant, "o3")
	publish(t, js, created, "o4")
	publish(t, js, natsx.CreatedSubject(tenant, false), "n1")
	publish(t, js, natsx.CreatedSubject(tenant, true), "a1")
	publish(t, js, natsx.CreatedSubject(tenant, false), "n2")
	got, filter := consumeUntil(t, js, after, 3)
	require.Equal(t, []string{"o3", "o4", "a1"}, got, "from its ack floor, the old forms and attachments only")
	require.Equal(t, natsx.CreatedWithAttachments(), filter, "updated in place")

	// Once the pre-tenant form cannot match any more, one filter subject.
	graceFor(t, 0)
	publish(t, js, natsx.CreatedSubject(tenant, false), "n3")
	publish(t, js, natsx.CreatedSubject(tenant, true), "a2")
	got, filter = consumeUntil(t, js, after, 1)
	require.Equal(t, []string{"a2"}, got)
	require.Equal(t, []string{created + ".*.*"}, filter)
	cons, err := js.Consumer(context.Background(), after.Stream, after.Durable)
	require.NoError(t, err)
	require.Equal(t, uint64(6), cons.CachedInfo().Delivered.Consumer, "six events delivered in all, none twice, no marked one")

	got, _ = consumeUntil(t, js, all, 9)
	require.Equal(t, []string{"o1", "o2", "o3", "o4", "n1", "a1", "n2", "n3", "a2"}, got)
}
