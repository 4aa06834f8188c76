package gateway

import (
	"bytes"
	"runtime"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// goid is the calling goroutine's id, from its stack's header.
func goid() int {
	b := make([]byte, 64)
	b = b[:runtime.Stack(b, false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	n, _ := strconv.Atoi(string(b[:bytes.IndexByte(b, ' ')]))
	return n
}

// waitIdle yields until n of r's goroutines wait.
func waitIdle(r *resumers, n int32) {
	for r.idle.Load() != n {
		runtime.Gosched()
	}
}

func TestResumersReuseAWaitingGoroutine(t *testing.T) {
	r := newResumers(1)
	ran := make(chan int)
	r.run(func() { ran <- goid() })
	first := <-ran
	waitIdle(r, 1)
	r.run(func() { ran <- goid() })
	require.Equal(t, first, <-ran, "a waiting goroutine runs the next resume")
	waitIdle(r, 1)

	// None waits while one is busy: a resume does not wait for it.
	busy, release := make(chan struct{}), make(chan struct{})
	r.run(func() { close(busy); <-release })
	<-busy
	r.run(func() { ran <- goid() })
	second := <-ran
	close(release)
	waitIdle(r, 1) // one of the two waits, the other (max 1) ends
	require.NotEqual(t, first, second)
	require.LessOrEqual(t, r.idle.Load(), int32(1))
}
