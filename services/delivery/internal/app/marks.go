package app

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
)

// DefaultMarkWindow is how long a DELIVERED receipt may wait for others to
// share its transaction (see marks), and markJoinDelay how long that
// transaction may then wait for another write's commit to join (on SQLite: a
// send's): at most their sum is added to the MarkMessagesDelivered call,
// which the gateway makes off the stream.
const (
	DefaultMarkWindow = 20 * time.Millisecond
	markJoinDelay     = 10 * time.Millisecond
)

// maxMarks is the most receipts one transaction takes.
const maxMarks = 256

// marks groups the DELIVERED receipts that the gateway reports
// (MarkMessagesDelivered) into one transaction (repo.MarkDelivered): one
// commit, and on SQLite one job of the writer's group commit, for every
// receipt of every thread that arrived within the window, instead of one
// each; on SQLite that job joins another write's commit if one comes within
// markJoinDelay (repo.MarkDelivered), so that under load receipts cost no
// commit of their own. No goroutine of its own: the first call of a batch leads it. It
// starts the batch at once when the previous one started more than window
// ago (a receipt after a quiet spell is not delayed), else when window has
// passed since then, or when maxMarks receipts are waiting; it commits the
// batch and hands every call of it the outcome. A call returns only once
// its receipt is committed (or failed), as before.
type marks struct {
	window time.Duration
	write  func(ctx context.Context, as []domain.Advance) error

	mu   sync.Mutex
	open *markBatch // collecting receipts; nil: none
	last time.Time  // when the last batch started
}

type markBatch struct {
	advs []domain.Advance
	full chan struct{} // closed when maxMarks receipts wait
	done chan struct{} // closed once err is set
	err  error
}

// mark records adv in the open batch (leading a new one if none is open) and
// returns the batch's outcome.
func (m *marks) mark(ctx context.Context, adv domain.Advance) error {
	m.mu.Lock()
	b := m.open
	lead := b == nil
	if lead {
		b = &markBatch{full: make(chan struct{}), done: make(chan struct{})}
		m.open = b
	}
	b.advs = append(b.advs, adv)
	if len(b.advs) == maxMarks {
		m.open = nil // the next receipt opens another batch
		close(b.full)
	}
	wait := m.window - time.Since(m.last)
	m.mu.Unlock()
	if !lead {
		<-b.done
		return b.err
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-b.full:
			t.Stop()
		}
	}
	m.mu.Lock()
	if m.open == b {
		m.open = nil
	}
	m.last = time.Now()
	advs := b.advs
	m.mu.Unlock()
	// In one order by thread and side, as the read receipts' batches (the
	// store locks in key order itself on PostgreSQL, whatever this order).
	// The other calls wait on this one: the leader's cancellation must not
	// fail their receipts.
	sort.Stable(byThread(advs))
	b.err = m.write(context.WithoutCancel(ctx), advs)
	close(b.done)
	return b.err
}
