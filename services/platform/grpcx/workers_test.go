package grpcx

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// Every call handed to the workers runs, one after another (a worker takes
// the next when it is free) and many at once (more workers start), including
// the call a worker receives as its last (it leaves after max calls).
func TestWorkersRunEveryCall(t *testing.T) {
	t.Parallel()
	w := &workers{calls: make(chan job), max: 3}
	for range 20 {
		ran := make(chan struct{})
		w.run(jobFunc(func() { close(ran) }))
		<-ran // a call that never ran would hang here (and the test time out)
	}

	var wg sync.WaitGroup
	var mu sync.Mutex
	ran := 0
	release := make(chan struct{})
	for range 50 {
		wg.Add(1)
		w.run(jobFunc(func() {
			defer wg.Done()
			<-release
			mu.Lock()
			ran++
			mu.Unlock()
		}))
	}
	close(release)
	wg.Wait()
	require.Equal(t, 50, ran)
}
