package grpcx

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/peer"
)

type callerKey struct{}

var serverContextSink context.Context

// The handler's context of an in-process call: none of the caller's values,
// its deadline and cancellation, its own end (which does not end the
// caller's), contexts derived from it without a goroutine each, and made in
// few allocations (the cancel context registered with the caller's directly,
// not through AfterFunc: 5 allocations a call, were 9).
func TestServerContext(t *testing.T) {
	base, cancelBase := context.WithTimeout(context.WithValue(context.Background(), callerKey{}, "caller"), time.Hour)
	defer cancelBase()
	hs := &headerStream{method: "/m"}

	var d detached
	sctx, cancel := serverContext(base, &d, hs)
	require.Nil(t, sctx.Value(callerKey{}), "a caller's value reached the handler")
	want, _ := base.Deadline()
	got, ok := sctx.Deadline()
	require.True(t, ok)
	require.Equal(t, want, got)
	p, ok := peer.FromContext(sctx)
	require.True(t, ok)
	require.Equal(t, inprocPeer, p)

	// Derived contexts register with the call's: no goroutine each.
	before := runtime.NumGoroutine()
	var derived []context.Context
	for range 100 {
		c, cancel := context.WithCancel(sctx)
		defer cancel()
		derived = append(derived, c)
	}
	require.Less(t, runtime.NumGoroutine()-before, 10, "derived contexts started goroutines")

	cancel() // the call's end ends the handler's context and what it derived
	<-sctx.Done()
	require.ErrorIs(t, context.Cause(sctx), context.Canceled)
	for _, c := range derived {
		<-c.Done()
	}
	require.NoError(t, base.Err(), "the call's end reached the caller")

	// The caller's cancellation reaches the handler.
	caller, cancelCaller := context.WithCancel(base)
	sctx, cancel = serverContext(caller, &d, hs)
	defer cancel()
	c, cancelDerived := context.WithCancel(sctx)
	defer cancelDerived()
	cancelCaller()
	<-sctx.Done()
	<-c.Done()

	allocs := testing.AllocsPerRun(200, func() {
		var cancel context.CancelFunc
		serverContextSink, cancel = serverContext(base, &d, hs)
		cancel()
	})
	require.LessOrEqual(t, allocs, float64(5))
}
