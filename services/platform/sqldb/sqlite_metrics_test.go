package sqldb

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
)

// histogram returns h's observations so far and their sum (seconds).
func histogram(t *testing.T, h prometheus.Histogram) (uint64, float64) {
	var m dto.Metric
	require.NoError(t, h.Write(&m))
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

// A write queued behind a running batch counts its time in the queue as
// wait, and from its statements' start to the commit as run; each commit
// counts its statements' time and its COMMIT's. Deferred writes, which
// wait on purpose, are not counted as waiting.
func TestSQLiteWriteWaitAndRunMetrics(t *testing.T) {
	ctx := context.Background()
	db, commits, insert := openKV(t)
	m := db.metrics
	waits0, _ := histogram(t, m.wait)
	runs0, _ := histogram(t, m.run)
	stmts0, _ := histogram(t, m.statements)
	commit0, _ := histogram(t, m.commit)
	commits0 := commits.Load()

	// held: from when the queued write is seen in the queue until the
	// running write's statements are done. The queued write waits at least
	// that long (the batch is busy), and the running write's run and the
	// batch's statements span it.
	var held time.Duration
	queued := make(chan error, 1)
	require.NoError(t, db.Write(ctx, func(tx *Tx) error {
		go func() { queued <- db.Write(ctx, insert("queued")) }()
		for len(db.jobs) < 1 {
			runtime.Gosched()
		}
		seen := time.Now()
		err := insert("running")(tx)
		held = time.Since(seen)
		return err
	}))
	require.NoError(t, <-queued)
	require.Equal(t, commits0+1, commits.Load(), "the queued write joined the running batch")

	waits, waitSum := histogram(t, m.wait)
	runs, runSum := histogram(t, m.run)
	stmts, stmtSum := histogram(t, m.statements)
	commitN, _ := histogram(t, m.commit)
	require.Equal(t, uint64(2), waits-waits0, "both writes waited (the first hardly)")
	require.Equal(t, uint64(2), runs-runs0)
	require.Equal(t, uint64(1), stmts-stmts0, "one batch")
	require.Equal(t, uint64(1), commitN-commit0, "one COMMIT")
	require.Positive(t, held)
	require.GreaterOrEqual(t, waitSum, held.Seconds(), "the queued write's wait covers the running write's statements")
	require.GreaterOrEqual(t, runSum, held.Seconds(), "the running write's run covers its own statements")
	require.GreaterOrEqual(t, stmtSum, held.Seconds())

	require.NoError(t, db.WriteDeferred(ctx, time.Millisecond, insert("deferred")))
	waits2, _ := histogram(t, m.wait)
	runs2, _ := histogram(t, m.run)
	commit2, _ := histogram(t, m.commit)
	require.Equal(t, waits, waits2, "a deferred write is not counted as waiting")
	require.Equal(t, runs, runs2)
	require.Equal(t, commitN+1, commit2, "its commit is")
}
