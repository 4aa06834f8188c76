package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

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
