package gateway

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestKeepAliveWheel: one goroutine marks every registered connection
// ping-due once per interval and wakes it; a removed connection is no
// longer visited, and the wheel's goroutine ends with the last one.
func TestKeepAliveWheel(t *testing.T) {
	w := newKeepAliveWheel(30 * time.Millisecond)
	conns := make([]*conn, 200)
	for i := range conns {
		conns[i] = &conn{wake: make(chan struct{}, 1), kaSlot: -1}
		w.add(conns[i])
	}
	// Every connection is woken with a ping due, twice (once per interval).
	for round := range 2 {
		for i, c := range conns {
			select {
			case <-c.wake:
			case <-time.After(waitFor):
				t.Fatalf("round %d: connection %d was not woken", round, i)
			}
			require.True(t, c.takePing())
			require.False(t, c.takePing(), "taken once")
		}
	}
	stop := w.stop
	for _, c := range conns {
		w.remove(c)
		require.Equal(t, -1, c.kaSlot)
	}
	w.remove(conns[0]) // twice is harmless
	require.Equal(t, 0, w.count)
	select {
	case <-stop:
	default:
		t.Fatal("the wheel's goroutine was not told to stop")
	}
	for _, slot := range w.slots {
		require.Empty(t, slot)
	}
	// A new connection starts it again.
	c := &conn{wake: make(chan struct{}, 1), kaSlot: -1}
	w.add(c)
	select {
	case <-c.wake:
	case <-time.After(waitFor):
		t.Fatal("not woken after a restart")
	}
	require.True(t, c.takePing())
	w.remove(c)
}
