package gateway

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/clinicchat/clinicchat/services/platform/auth"
)

// Waking a stream costs a goroutine wake-up and, once it has written what
// is queued, a write and another wait; a burst of events for the same
// stream (the practice's staff see every thread's) should cost one. The
// hub queues each event at once but wakes the connections it queued on at
// the end of the burst: when the consumer delivers an event after which
// the stream held nothing more for it (JetStream's pending count, taken
// when it was delivered, is 0), after wakeMax events, or after wakeWait
// at the latest. Nothing waits for a wake-up: an event queued is written
// by whichever wake-up comes first (a keep-alive's too), in queue order.
// A new message wakes its recipient's stream at once (dispatch): under a
// steady flow of sends a burst's end rarely comes before the timer, whose
// wake-up then waits its turn on the busy cores (the recipient's stream
// took 1–3 ms p90 from the fan-out to its goroutine that way, 0.1 ms when
// woken at once; BENCHMARKS.md, gateway12); what was held for it goes out
// in the same write.
//
// Some events tell a viewer nothing they are waiting for: a thread's
// conversation.updated (its preview, counts and order in the list; the
// message itself came as message.created), a receipt of a message the
// viewer did not send (the receiving side's own DELIVERED and READ echoed
// back, and every other staff member's copy of a colleague's receipt: the
// practice's staff see every thread's), a user's pin or mute echoed to
// their other tabs, a conversation.read (never written). Those are held
// (lazyFor) up to lazyWait, not only to the end of their burst: a stream
// woken for anything else in the meantime (its next new message, above
// all) writes them in the same write. Under a steady flow a patient's stream then gets one write per message instead
// of two (message.created, then its thread's conversation.updated a
// commit later), and its reader one wake-up (BENCHMARKS.md, edge14); a
// receipt wakes only its message's sender's streams, not every staff
// stream of the practice, whose other receipts ride along with their
// own (BENCHMARKS.md, gw16). A stream whose queue is half full is not
// held.
const (
	// wakeWait bounds how long an event waits for the rest of its burst.
	wakeWait = 2 * time.Millisecond
	// wakeMax is the most events a burst holds back.
	wakeMax = 64
	// lazyWait bounds how long an event lazyFor its viewer is held.
	lazyWait = 20 * time.Millisecond
)

// lazyFor reports whether e can wait for id's stream to be woken for
// something else, up to lazyWait.
func lazyFor(id auth.Identity, e *event) bool {
	switch e.kind {
	case itemConversation, itemUserState, itemConversationRead:
		return true
	case itemMessageUpdated:
		// Prompt only for the message's sender, who waits for its ticks.
		return !id.IsPrincipal(e.message.GetSender())
	}
	return false
}

// wakeBatch is one stream's connections with events queued but not yet
// woken. The stream's consumer callback adds and flushes; its timer and the
// consumer's end flush too.
type wakeBatch struct {
	// slot is the batch's index in conn.wakeDue.
	slot   int
	mu     sync.Mutex
	conns  []*conn
	events int
	// max is how many events wake the batch at once (0: no bound).
	max   int
	timer *time.Timer
	wait  time.Duration
	// armed: the timer runs for the current batch.
	armed bool
	// wakes counts flushes that woke connections, timed those the timer
	// made (tests).
	wakes, timed atomic.Uint64
}

func newWakeBatch(slot int, wait time.Duration) *wakeBatch {
	b := &wakeBatch{slot: slot, wait: wait, max: wakeMax}
	b.timer = time.AfterFunc(time.Hour, func() {
		if b.flush() {
			b.timed.Add(1)
		}
	})
	b.timer.Stop()
	return b
}

// add records that c has an event queued to wake it for.
func (b *wakeBatch) add(c *conn) {
	b.mu.Lock()
	if !c.wakeDue[b.slot] {
		c.wakeDue[b.slot] = true
		b.conns = append(b.conns, c)
	}
	b.events++
	full := b.max > 0 && b.events >= b.max
	if !b.armed && !full {
		b.armed = true
		b.timer.Reset(b.wait)
	}
	b.mu.Unlock()
	if full {
		b.flush()
	}
}

// flush wakes every connection added since the last flush that still has
// something queued (a stream woken for something else meanwhile wrote what
// it held: no wake-up for nothing); false when none was added.
func (b *wakeBatch) flush() bool {
	b.mu.Lock()
	conns := b.conns
	if len(conns) == 0 {
		b.mu.Unlock()
		return false
	}
	b.conns, b.events = nil, 0
	if b.armed {
		b.armed = false
		b.timer.Stop()
	}
	for _, c := range conns {
		c.wakeDue[b.slot] = false
	}
	b.mu.Unlock()
	for _, c := range conns {
		if !c.idle() {
			c.signal()
		}
	}
	b.wakes.Add(1)
	return true
}
