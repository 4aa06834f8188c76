package app

import (
	"context"
	"sync"
	"time"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/auth"
)

// MaxUpToAhead is how far past the projection's last message MarkRead's upTo
// may point: a message the caller saw that the projection has not applied
// yet is at most a few messages ahead; beyond this it could not exist yet.
const MaxUpToAhead = 1000

// maxWaitsPerCaller bounds the MarkRead calls of one caller that wait for the
// projection at once; further calls use what the projection has.
const maxWaitsPerCaller = 4

// seqPoll is how often a waiting MarkRead looks for messages applied by
// another replica's consumer (this replica's wake it at once).
const seqPoll = 100 * time.Millisecond

// seqWaiters wakes MarkRead calls waiting for a conversation's projection to
// reach a message: ApplyMessage fires the conversation after its commit.
type seqWaiters struct {
	mu      sync.Mutex
	convs   map[string]*convWaiters // practice/id
	callers map[string]int          // waits per principal
}

type convWaiters struct {
	ch   chan struct{} // closed by the next fire
	refs int
}

// join registers a waiter of conv for caller; ok is false when the caller
// already waits maxWaitsPerCaller times.
func (w *seqWaiters) join(conv, caller string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.callers[caller] >= maxWaitsPerCaller {
		return false
	}
	if w.convs == nil {
		w.convs, w.callers = map[string]*convWaiters{}, map[string]int{}
	}
	w.callers[caller]++
	e := w.convs[conv]
	if e == nil {
		e = &convWaiters{ch: make(chan struct{})}
		w.convs[conv] = e
	}
	e.refs++
	return true
}

func (w *seqWaiters) leave(conv, caller string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.callers[caller]--; w.callers[caller] <= 0 {
		delete(w.callers, caller)
	}
	if e := w.convs[conv]; e != nil {
		if e.refs--; e.refs <= 0 {
			delete(w.convs, conv)
		}
	}
}

// next returns a channel closed by conv's next fire (conv must be joined).
func (w *seqWaiters) next(conv string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.convs[conv].ch
}

// fire wakes conv's waiters, if any.
func (w *seqWaiters) fire(conv string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if e := w.convs[conv]; e != nil {
		close(e.ch)
		e.ch = make(chan struct{})
	}
}

func convKey(practice, id string) string { return practice + "/" + id }

// awaitSeq waits until the projection of c has message seq, at most
// ProjectionWait, and returns the freshest c it read. It wakes on this
// replica's commits of the projection and looks every seqPoll for another
// replica's.
func (a *App) awaitSeq(ctx context.Context, who auth.Identity, c domain.Conversation, seq int64) domain.Conversation {
	key := convKey(who.Practice, c.ID)
	if !a.seqs.join(key, who.Principal()) {
		return c
	}
	defer a.seqs.leave(key, who.Principal())
	deadline := time.NewTimer(a.ProjectionWait)
	defer deadline.Stop()
	poll := time.NewTicker(seqPoll)
	defer poll.Stop()
	for {
		wake := a.seqs.next(key) // before the read, so no commit is missed
		if fresh, err := a.repo.Get(ctx, who.Practice, c.ID, viewer(who)); err == nil {
			c = fresh
		}
		if c.LastMessageSeq >= seq {
			return c
		}
		select {
		case <-wake:
		case <-poll.C:
		case <-deadline.C:
			return c
		case <-ctx.Done():
			return c
		}
	}
}
