package app

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
)

// recorder is a marks write that keeps every batch it was given.
type recorder struct {
	mu      sync.Mutex
	batches [][]domain.Advance
	err     error
}

func (r *recorder) write(_ context.Context, as []domain.Advance) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, append([]domain.Advance(nil), as...))
	return r.err
}

// written reports whether adv is in a batch already written.
func (r *recorder) written(adv domain.Advance) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.batches {
		for _, a := range b {
			if a == adv {
				return true
			}
		}
	}
	return false
}

func receiptOf(i int) domain.Advance {
	return domain.Advance{Practice: "p", ConversationID: fmt.Sprintf("c%03d", i%7), ReaderIsPatient: i%2 == 0,
		Reader: fmt.Sprintf("r%d", i), UpTo: int64(i + 1), To: domain.Delivered}
}

// Receipts that arrive within the window share one write; each call returns
// only once the write holding its receipt is done, with its outcome.
func TestMarksGroupReceiptsIntoOneWrite(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	// A batch just started: the next one waits the window, here long
	// enough that only maxMarks waiting receipts start it.
	m := &marks{window: time.Hour, write: rec.write, last: time.Now()}
	var wg sync.WaitGroup
	errs := make([]error, maxMarks)
	for i := range maxMarks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.mark(context.Background(), receiptOf(i))
			if !rec.written(receiptOf(i)) {
				errs[i] = fmt.Errorf("receipt %d returned before it was written", i)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, rec.batches, 1)
	require.Len(t, rec.batches[0], maxMarks)
	// Every receipt once, in byThread's order.
	seen := map[domain.Advance]bool{}
	for i, a := range rec.batches[0] {
		require.False(t, seen[a])
		seen[a] = true
		if i > 0 {
			require.False(t, byThread(rec.batches[0]).Less(i, i-1), "batch not in thread order at %d", i)
		}
	}
}

// A receipt after a quiet spell is written at once, alone; a failed write
// fails every receipt of its batch.
func TestMarksQuietReceiptAtOnceAndFailureReachesEveryCall(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	m := &marks{window: time.Hour, write: rec.write}
	require.NoError(t, m.mark(context.Background(), receiptOf(1)))
	require.Len(t, rec.batches, 1)

	boom := errors.New("disk full")
	rec.err = boom
	m.last = time.Now()
	var wg sync.WaitGroup
	errs := make([]error, maxMarks)
	for i := range maxMarks {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = m.mark(context.Background(), receiptOf(i)) }()
	}
	wg.Wait()
	for _, err := range errs {
		require.ErrorIs(t, err, boom)
	}
	require.Len(t, rec.batches, 2)
}

// The leader's cancelled context does not fail the write of the receipts
// that wait on it.
func TestMarksLeaderCancellationDoesNotCancelTheWrite(t *testing.T) {
	t.Parallel()
	var got error
	m := &marks{window: time.Hour, write: func(ctx context.Context, _ []domain.Advance) error {
		got = ctx.Err()
		return nil
	}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, m.mark(ctx, receiptOf(1)))
	require.NoError(t, got)
}
