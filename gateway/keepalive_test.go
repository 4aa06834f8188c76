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
	// Every connection is woken with a ping due, again and again (once per
	// interval). A wake may find the ping already taken (a tick between a
	// wake and its take signals again): the stream loop skips those too.
	waitPing := func(c *conn) bool {
		deadline := time.After(waitFor)
		for {
			select {
			case <-c.wake:
				if c.takePing() {
					return true
				}
			case <-deadline:
				return false
			}
		}
	}
	for round := range 2 {
		for i, c := range conns {
			require.True(t, waitPing(c), "round %d: connection %d was not pinged", round, i)
		}
	}
	stop := w.stop
	for _, c := range conns {
		w.remove(c)
		require.Equal(t, -1, c.kaSlot)
	}
	w.remove(conns[0]) // twice is harmless
	w.mu.Lock()
	count, slots := w.count, w.slots
	for _, slot := range slots {
		require.Empty(t, slot)
	}
	w.mu.Unlock()
	require.Equal(t, 0, count)
	select {
	case <-stop:
	default:
		t.Fatal("the wheel's goroutine was not told to stop")
	}
	// A new connection starts it again.
	c := &conn{wake: make(chan struct{}, 1), kaSlot: -1}
	w.add(c)
	require.True(t, waitPing(c), "not pinged after a restart")
	w.remove(c)
}
