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

	const hold = 20 * time.Millisecond
	queued := make(chan error, 1)
	require.NoError(t, db.Write(ctx, func(tx *Tx) error {
		go func() { queued <- db.Write(ctx, insert("queued")) }()
		for len(db.jobs) < 1 {
			runtime.Gosched()
		}
		// The queued write waits at least this long: the batch is busy.
		time.Sleep(hold)
		return insert("running")(tx)
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
	require.GreaterOrEqual(t, waitSum, hold.Seconds(), "the queued write's wait covers the running write's hold")
	require.GreaterOrEqual(t, runSum, hold.Seconds(), "the running write's run covers its own hold")
	require.GreaterOrEqual(t, stmtSum, hold.Seconds())

	require.NoError(t, db.WriteDeferred(ctx, time.Millisecond, insert("deferred")))
	waits2, _ := histogram(t, m.wait)
	runs2, _ := histogram(t, m.run)
	commit2, _ := histogram(t, m.commit)
	require.Equal(t, waits, waits2, "a deferred write is not counted as waiting")
	require.Equal(t, runs, runs2)
	require.Equal(t, commitN+1, commit2, "its commit is")
}
