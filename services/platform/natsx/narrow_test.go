package natsx_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// embeddedStreams starts an embedded server with clinicchat's streams.
func embeddedStreams(t *testing.T) jetstream.JetStream {
	t.Helper()
	ns, nc, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: t.TempDir()}, zap.NewNop())
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close(); ns.Shutdown() })
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, natsx.EnsureStreams(ctx, js, natsx.StreamsConfig{}))
	return js
}

// graceFor sets natsx.TenantGrace for the test.
func graceFor(t *testing.T, d time.Duration) {
	old := natsx.TenantGrace
	natsx.TenantGrace = d
	t.Cleanup(func() { natsx.TenantGrace = old })
}

func publish(t *testing.T, js jetstream.JetStream, subject, data string) uint64 {
	t.Helper()
	ack, err := js.Publish(context.Background(), subject, []byte(data))
	require.NoError(t, err)
	return ack.Sequence
}

// The pre-tenant form stays in a filter while the stream has not held
// tenant-form events for TenantGrace (an older version's outbox rows may
// still be relayed), and while an event on it lies past the consumer's
// position or is recent; it goes once neither can be.
func TestNarrowLeavesOutThePreTenantFormOnlyWhenNoEventCanMatchIt(t *testing.T) {
	js := embeddedStreams(t)
	ctx := context.Background()
	created, updated := natsx.SubjectMessageCreated, natsx.SubjectMessageUpdated
	pair := natsx.Filter(created)
	narrow := func(filter []string, position uint64) []string {
		return natsx.Narrow(ctx, js, natsx.StreamDelivery, filter, position)
	}

	graceFor(t, 0)
	require.Equal(t, pair, narrow(pair, 0), "a fresh stream: no tenant-form event yet")
	publish(t, js, natsx.Tenant(created, "p", "patients/a"), "tenant")
	require.Equal(t, []string{created + ".>"}, narrow(pair, 0), "tenant events only, for long enough")
	graceFor(t, time.Hour)
	require.Equal(t, pair, narrow(pair, 0), "tenant events for less than TenantGrace")

	graceFor(t, 0)
	old := publish(t, js, created, "pre-tenant")
	require.Equal(t, pair, narrow(pair, old-1), "a pre-tenant event past the position")
	require.Equal(t, []string{created + ".>"}, narrow(pair, old), "the consumer has handled it")
	require.Equal(t, []string{created, created + ".>", updated + ".>"}, narrow(natsx.Filter(created, updated), old-1),
		"only the base with a pre-tenant event keeps its pre-tenant form")
	graceFor(t, time.Hour)
	require.Equal(t, pair, narrow(pair, old), "the pre-tenant event is recent: an older replica may still publish")

	whole := []string{natsx.SubjectMessageCreated + ".>"}
	require.Equal(t, whole, narrow(whole, 0), "nothing to leave out")
}

// A durable created by an earlier start with both forms delivers the
// pre-tenant event still ahead of it; at a later start, once that one is
// handled and old, the same durable is updated in place to the tenant form
// alone and goes on from its ack floor: the new events once each, nothing
// handled before delivered again.
func TestADurableIsNarrowedInPlaceAndContinuesFromItsAckFloor(t *testing.T) {
	js := embeddedStreams(t)
	created := natsx.SubjectMessageCreated
	spec := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: "narrowed", FilterSubjects: natsx.Filter(created)}
	tenant := natsx.Tenant(created, "p", "patients/a")
	echo := natsx.Tenant(natsx.SubjectMessageStatusEcho, "p", "patients/a")

	// run consumes until it has handled want events, and returns them and
	// the durable's filter while it ran.
	run := func(want int) ([]string, []string) {
		ctx, cancel := context.WithCancel(context.Background())
		var mu sync.Mutex
		var got []string
		enough := make(chan struct{})
		stopped := make(chan error, 1)
		go func() {
			stopped <- natsx.ConsumeBatch(ctx, js, zap.NewNop(), spec, 0, func(_ context.Context, msgs []jetstream.Msg) []error {
				mu.Lock()
				defer mu.Unlock()
				for _, m := range msgs {
					got = append(got, string(m.Data()))
				}
				if len(got) == want {
					close(enough)
				}
				return make([]error, len(msgs))
			})
		}()
		select {
		case <-enough:
		case <-time.After(10 * time.Second):
			t.Fatalf("handled %v, want %d events", got, want)
		}
		cons, err := js.Consumer(ctx, spec.Stream, spec.Durable)
		require.NoError(t, err)
		cfg := cons.CachedInfo().Config
		filter := cfg.FilterSubjects
		if cfg.FilterSubject != "" {
			filter = []string{cfg.FilterSubject}
		}
		last := publish(t, js, echo, "echo") // a mark past every handled event
		require.Eventually(t, func() bool {
			info, err := cons.Info(ctx)
			return err == nil && info.AckFloor.Stream == last-1 && info.NumAckPending == 0
		}, 10*time.Second, 5*time.Millisecond, "every handled event acked")
		cancel()
		require.NoError(t, <-stopped)
		mu.Lock()
		defer mu.Unlock()
		return got, filter
	}

	// The upgraded stream: tenant-form events, and one pre-tenant event
	// (an old outbox row) the durable has not handled yet.
	graceFor(t, 0)
	publish(t, js, tenant, "t1")
	publish(t, js, created, "pre-tenant")
	publish(t, js, tenant, "t2")
	got, filter := run(3)
	require.Equal(t, []string{"t1", "pre-tenant", "t2"}, got, "the pre-tenant event is delivered")
	require.Equal(t, natsx.Filter(created), filter, "both forms while it was ahead")

	// A later start: the pre-tenant event is handled (and, with a grace of
	// zero, old).
	publish(t, js, tenant, "t3")
	publish(t, js, tenant, "t4")
	got, filter = run(2)
	require.Equal(t, []string{"t3", "t4"}, got, "from the ack floor on, nothing twice")
	require.Equal(t, []string{created + ".>"}, filter, "updated in place to the tenant form alone")
	cons, err := js.Consumer(context.Background(), spec.Stream, spec.Durable)
	require.NoError(t, err)
	require.Equal(t, uint64(5), cons.CachedInfo().Delivered.Consumer, "five events delivered in all, none again")
}

// A durable with several filter subjects that starts further behind than
// CatchUpPending is delivered every event of the stream: its handler gets
// only its kinds, in stream order, the others are acked without it; once
// caught up it is narrowed again in place, and the next events of other
// kinds are no longer delivered. So for a SoleConsumer's memory durable
// (Positions).
func TestAFarBehindDurableCatchesUpUnfilteredAndIsFilteredAgain(t *testing.T) {
	t.Run("file", func(t *testing.T) { testFarBehind(t, false) })
	t.Run("memory", func(t *testing.T) { testFarBehind(t, true) })
}

func testFarBehind(t *testing.T, memory bool) {
	js := embeddedStreams(t)
	old := natsx.CatchUpPending
	natsx.CatchUpPending = 3
	t.Cleanup(func() { natsx.CatchUpPending = old })
	created, updated := natsx.SubjectMessageCreated, natsx.SubjectMessageUpdated
	spec := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: "audit-like", FilterSubjects: natsx.Filter(created, updated)}
	plain, name := js, spec.Durable
	if memory {
		db := openPositionsDB(t, filepath.Join(t.TempDir(), "service.db"))
		t.Cleanup(func() { _ = db.Close() })
		spec.Positions = natsx.DBPositions(db)
		js, name = natsx.SoleConsumer(js), name+natsx.AckAllSuffix
	}
	echo := natsx.Tenant(natsx.SubjectMessageStatusEcho, "p", "patients/a")
	var want []string
	for i := range 5 {
		for _, base := range []string{created, updated} {
			s := natsx.Tenant(base, "p", "patients/a")
			publish(t, js, s, fmt.Sprint(i))
			want = append(want, s+" "+fmt.Sprint(i))
		}
		publish(t, js, echo, "echo")
	}
	publish(t, js, created, "pre-tenant")
	want = append(want, created+" pre-tenant")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var got []string
	more := make(chan struct{}, 100)
	stopped := make(chan error, 1)
	go func() {
		stopped <- natsx.ConsumeBatch(ctx, js, zap.NewNop(), spec, 0, func(_ context.Context, msgs []jetstream.Msg) []error {
			mu.Lock()
			for _, m := range msgs {
				got = append(got, m.Subject()+" "+string(m.Data()))
			}
			mu.Unlock()
			more <- struct{}{}
			return make([]error, len(msgs))
		})
	}()
	handled := func(n int) []string {
		for {
			mu.Lock()
			g := slices.Clone(got)
			mu.Unlock()
			if len(g) >= n {
				return g
			}
			select {
			case <-more:
			case <-time.After(10 * time.Second):
				t.Fatalf("handled %v, want %d events", g, n)
			}
		}
	}
	require.Equal(t, want, handled(len(want)), "its kinds, both forms, in stream order; no echo")

	cons, err := plain.Consumer(ctx, spec.Stream, name)
	require.NoError(t, err)
	require.Equal(t, memory, cons.CachedInfo().Config.MemoryStorage)
	var info *jetstream.ConsumerInfo
	require.Eventually(t, func() bool {
		info, err = cons.Info(ctx)
		return err == nil && slices.Equal(info.Config.FilterSubjects, spec.FilterSubjects) &&
			info.NumAckPending == 0 && info.AckFloor.Stream == 16
	}, 10*time.Second, 5*time.Millisecond, "filtered again in place, everything acked")
	require.Equal(t, uint64(16), info.Delivered.Consumer, "unfiltered while behind: the echoes were delivered")

	publish(t, js, echo, "echo")
	last := natsx.Tenant(created, "p", "patients/a")
	publish(t, js, last, "last")
	require.Equal(t, last+" last", handled(len(want) + 1)[len(want)])
	info, err = cons.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(17), info.Delivered.Consumer, "the new echo is not delivered")
	cancel()
	require.NoError(t, <-stopped)
}
