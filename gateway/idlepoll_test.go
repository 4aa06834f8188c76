package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// readUntil reads c's event stream until a line containing want.
func readUntil(t *testing.T, r *bufio.Reader, want string) {
	t.Helper()
	for {
		line, err := r.ReadString('\n')
		require.NoError(t, err, "waiting for %q", want)
		if strings.Contains(line, want) {
			return
		}
	}
}

// Idle streams on taken-over connections hold no goroutine on Linux (they
// park in the idle poller; idlePoll=false: each waits in a read, as on
// other OSes). Either way a parked stream is woken by its events, ignores
// what its client sends, ends at once when its client hangs up, and ends
// at shutdown.
func TestEventsIdleStreamsPark(t *testing.T) {
	for _, idlePoll := range []bool{true, false} {
		t.Run(fmt.Sprintf("idlePoll=%v", idlePoll), func(t *testing.T) {
			if idlePoll && !idlePollSupported {
				t.Skip("no idle poller on this OS")
			}
			h := newHarness(t, func(h *harness, c *Config, _ *Deps) {
				h.noIdlePoll = !idlePoll
				c.KeepAlive = time.Hour // no write would notice a disconnect
				c.MaxStreamsPerIdentity = 100
			})
			const n = 60
			tok := h.token("doc", auth.RoleDentist, "p1", 0)
			before := runtime.NumGoroutine()
			conns := make([]net.Conn, n)
			readers := make([]*bufio.Reader, n)
			for i := range conns {
				conns[i], _ = h.rawEvents(tok)
				readers[i] = bufio.NewReader(conns[i])
				require.NoError(t, conns[i].SetReadDeadline(time.Now().Add(waitFor)))
				readUntil(t, readers[i], ": connected") // the hello: open and idle
			}
			require.Equal(t, n, h.gw.openLimitSlots())
			if idlePoll {
				require.Eventually(t, func() bool { return runtime.NumGoroutine() < before+n/2 }, waitFor, 5*time.Millisecond,
					"parked streams hold no goroutine: %d before, %d with %d open", before, runtime.NumGoroutine(), n)
				require.EqualValues(t, n, ParkingStreams())
			} else {
				require.GreaterOrEqual(t, runtime.NumGoroutine(), before+n)
			}

			// What a client sends is discarded; its stream stays.
			_, err := conns[0].Write([]byte("hello?\r\n"))
			require.NoError(t, err)
			// Every parked stream is woken by an event of its practice.
			h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "1", "patients/pa", "hi", 1, false))
			for i, r := range readers {
				require.NoError(t, conns[i].SetReadDeadline(time.Now().Add(waitFor)))
				readUntil(t, r, "conversations/ca/messages/1")
			}
			// And parks again: a second one reaches every stream too.
			h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "2", "patients/pa", "hi", 2, false))
			for _, r := range readers {
				readUntil(t, r, "conversations/ca/messages/2")
			}

			// A hang-up ends a parked stream at once (no write notices it).
			for _, c := range conns[:n/2] {
				require.NoError(t, c.Close())
			}
			require.Eventually(t, func() bool { return h.gw.openLimitSlots() == n-n/2 }, waitFor, 5*time.Millisecond)

			// Shutdown ends the rest: their clients read to the end.
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			require.NoError(t, h.gw.Shutdown(ctx))
			require.Equal(t, 0, h.gw.openLimitSlots())
			require.Zero(t, ParkingStreams())
			for i, c := range conns[n/2:] {
				_, err := io.Copy(io.Discard, readers[n/2+i])
				require.NoError(t, err, "stream %d ends", i)
				_ = c.Close()
			}
		})
	}
}

// A parked stream takes its wake-up before it drains, as a stream on
// net/http does: the wake-up is not left for after the drain, where it
// would drain again at once and write, apart, an event queued in between
// without one (held for the stream's next wake-up, hubwake.go). The test
// holds the stream right after the drain that wrote its new message, lets
// a receipt queue for it (held: the patient's own echo), and then checks
// that the stream parked with the receipt still queued and nothing more
// written.
func TestParkedStreamTakesItsWakeUpBeforeItDrains(t *testing.T) {
	if !idlePollSupported {
		t.Skip("no idle poller on this OS")
	}
	h := newHarness(t, func(_ *harness, c *Config, _ *Deps) { c.KeepAlive = time.Hour })
	h.conv.add("conversations/ca", "p1", "patients/pa")
	hub := h.gw.hub
	for _, b := range hub.lazy {
		b.mu.Lock()
		b.wait = time.Hour // held until something else wakes the stream
		b.mu.Unlock()
	}
	// armed: the stream's delivery cursor before the new message, +1.
	var armed atomic.Uint64
	held := make(chan *eventStream, 1)
	resume := make(chan struct{})
	hook := func(st *eventStream) {
		if st.s != h.gw || !st.id.IsPrincipal("patients/pa") {
			return
		}
		if a := armed.Load(); a == 0 || st.cur.d < a {
			return
		}
		select {
		case held <- st: // the first drain past the new message
			<-resume
		default:
		}
	}
	stepDrained.Store(&hook)
	t.Cleanup(func() { stepDrained.Store(nil) })
	writes := h.sseWrites

	pa := h.openEvents(h.token("pa", auth.RolePatient, "p1", 0), "")
	armed.Store(hub.position().d + 1) // nothing else is published here
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m1", "users/doc", "x", 1, false))
	var st *eventStream
	select {
	case st = <-held:
	case <-time.After(waitFor):
		t.Fatal("the stream never drained its new message")
	}
	requireMessage(t, pa.next(), "conversations/ca/messages/m1")
	written := writes()

	// The patient's receipt of m1, echoed back to it: queued, not woken.
	m := messageCreated("p1", "ca", "pa", "m1", "users/doc", "x", 1, false).GetMessage()
	m.Status = deliveryv1.Message_READ
	seq := h.publish(natsx.SubjectMessageStatusEcho, &deliveryv1.MessageUpdated{Meta: meta("p1", natsx.SystemActor),
		Message: m, Patient: "patients/pa"})
	require.Eventually(t, func() bool { return hub.position().d >= seq }, waitFor, time.Millisecond)
	require.False(t, st.c.idle(), "the receipt waits in the stream's queue")
	close(resume)

	require.Eventually(t, func() bool { return st.raw.state.Load() == hsParked }, waitFor, time.Millisecond)
	require.False(t, st.c.idle(), "parked with the receipt still queued")
	require.Equal(t, written, writes(), "nothing written for the receipt")

	// The next wake-up writes it.
	require.True(t, hub.lazy[streamD].flush())
	require.Equal(t, EventMessageUpdated, pa.next().Event)
	require.Equal(t, written+1, writes())
}
