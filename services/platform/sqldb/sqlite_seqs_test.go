package sqldb

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Tx.Seqs: numbers go up from highest across writes, highest is read once,
// a job that fails gives its numbers back (alone, and inside a batch where
// the jobs after it take them), and ResetSeqs reads highest again.
func TestSeqsGoUpAndRollBackWithTheirJob(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "t.db"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	reads := 0
	highest := func(context.Context, *Tx) (int64, error) { reads++; return 10, nil }
	take := func(n int, got *int64, fail error) func(tx *Tx) error {
		return func(tx *Tx) error {
			first, err := tx.Seqs(ctx, "s", n, highest)
			if err != nil {
				return err
			}
			*got = first
			return fail
		}
	}
	var a, b, c, d, e int64
	require.NoError(t, db.Write(ctx, take(3, &a, nil)))
	require.NoError(t, db.Write(ctx, take(1, &b, nil)))
	require.Equal(t, []int64{11, 14}, []int64{a, b})
	require.Equal(t, 1, reads, "highest is read once")

	errBoom := errors.New("boom")
	require.ErrorIs(t, db.Write(ctx, take(5, &c, errBoom)), errBoom) // a batch of one: rolled back
	require.Equal(t, int64(15), c)

	// A batch: the first write holds the writer until the next two are
	// queued behind it; they join its commit, the failing one in a
	// savepoint rolled back.
	hold, held := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- db.Write(ctx, func(tx *Tx) error {
			close(held)
			<-hold
			_, err := tx.Seqs(ctx, "s", 1, highest)
			return err
		})
	}()
	<-held
	results := make(chan error, 2)
	go func() { results <- db.Write(ctx, take(2, &d, errBoom)) }()
	require.Eventually(t, func() bool { return len(db.jobs) == 1 }, 5*time.Second, time.Millisecond)
	go func() { results <- db.Write(ctx, take(1, &e, nil)) }()
	require.Eventually(t, func() bool { return len(db.jobs) == 2 }, 5*time.Second, time.Millisecond)
	close(hold)
	require.NoError(t, <-first)
	r1, r2 := <-results, <-results
	require.ElementsMatch(t, []error{errBoom, nil}, []error{r1, r2})
	require.Equal(t, int64(16), d, "after the first write's 15")
	require.Equal(t, int64(16), e, "the failed job's numbers, given back")

	var f int64
	require.NoError(t, db.Write(ctx, func(tx *Tx) error { tx.ResetSeqs("s"); return take(1, &f, nil)(tx) }))
	require.Equal(t, int64(11), f, "after a reset, from highest again")
	require.Equal(t, 2, reads)
}
