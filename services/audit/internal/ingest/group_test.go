package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/audit/internal/app"
	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
)

// sink records each IngestAll call; it fails every call holding an arrival
// whose event id is bad.
type sink struct {
	mu    sync.Mutex
	calls [][]app.Arrival
	bad   string
}

func (s *sink) IngestAll(_ context.Context, in []app.Arrival) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, in)
	for _, a := range in {
		if a.Entry.EventID == s.bad {
			return errors.New("refused")
		}
	}
	return nil
}

func arrivals(stream, n int) []app.Arrival {
	out := make([]app.Arrival, n)
	for i := range out {
		out[i] = app.Arrival{Subject: fmt.Sprintf("s%d", stream), Entry: domain.Entry{EventID: fmt.Sprintf("e%d-%d", stream, i)}}
	}
	return out
}

// runGroup runs a group whose interval never ends during the test, after a
// first commit (which goes at once); it returns the group and its sink.
func runGroup(t *testing.T) (*group, *sink) {
	return runGroupFull(t, maxGroup+1)
}

// runGroupFull is runGroup with batches of full events or more full.
func runGroupFull(t *testing.T, full int) (*group, *sink) {
	s := &sink{bad: "bad"}
	g := newGroup(s, time.Hour, full)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); g.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	require.NoError(t, g.ingest(ctx, arrivals(99, 1)), "a first event commits at once")
	require.Len(t, s.calls, 1)
	return g, s
}

// Batches of several streams handed over within the interval share one
// commit, and each is answered only after it.
func TestGroupSharesOneCommitAcrossStreams(t *testing.T) {
	t.Parallel()
	g, s := runGroup(t)
	const streams = maxGroup / MaxBatch
	errs := make([]error, streams)
	var wg sync.WaitGroup
	for i := range streams {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = g.ingest(context.Background(), arrivals(i, MaxBatch)) }()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, s.calls, 2)
	require.Len(t, s.calls[1], maxGroup)
}

// A batch that fails does not fail the others it shared a transaction with:
// each is tried again alone.
func TestGroupIsolatesAFailingBatch(t *testing.T) {
	t.Parallel()
	g, s := runGroup(t)
	good := arrivals(1, maxGroup-2)
	bad := []app.Arrival{{Entry: domain.Entry{EventID: "ok"}}, {Entry: domain.Entry{EventID: "bad"}}}
	var errGood, errBad error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); errGood = g.ingest(context.Background(), good) }()
	go func() { defer wg.Done(); errBad = g.ingest(context.Background(), bad) }()
	wg.Wait()
	require.NoError(t, errGood)
	require.Error(t, errBad)
	require.Len(t, s.calls, 4, "the first event, the shared try, then each batch alone")
}

// Batches waiting when the service stops are answered (not acked) instead of
// left hanging.
func TestGroupAnswersWaitingBatchesAtStop(t *testing.T) {
	t.Parallel()
	s := &sink{}
	g := newGroup(s, time.Hour, maxGroup+1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); g.run(ctx) }()
	require.NoError(t, g.ingest(ctx, arrivals(0, 1)))
	errc := make(chan error, 1)
	go func() { errc <- g.ingest(context.Background(), arrivals(1, 1)) }()
	cancel() // before or after the group took the batch: answered either way
	require.Error(t, <-errc)
	<-done
	require.Len(t, s.calls, 1)
}

// A full batch (its stream has a backlog) commits at once, with whatever
// was handed over beside it, instead of waiting out the interval (an hour
// here): waiting would cap the log's rate at one batch per stream per
// interval.
func TestGroupCommitsAFullBatchAtOnce(t *testing.T) {
	t.Parallel()
	g, s := runGroupFull(t, 8)
	short := make(chan error, 1)
	go func() { short <- g.ingest(context.Background(), arrivals(1, 7)) }()
	full := make(chan error, 1)
	go func() { full <- g.ingest(context.Background(), arrivals(2, 8)) }()
	select {
	case err := <-full:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("a full batch waited for the interval")
	}
	s.mu.Lock()
	require.Len(t, s.calls, 2, "the first event, then the full batch's commit")
	n := len(s.calls[1])
	s.mu.Unlock()
	require.Contains(t, []int{8, 15}, n, "the full batch, and the short one if it was handed over first")
	if n == 15 {
		require.NoError(t, <-short)
	}
}
