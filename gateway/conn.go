package gateway

import (
	"context"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// conn is one /v1/events connection as the hub sees it: who it is and a
// bounded queue of events the hub pushes without blocking. It holds no NATS
// object. The queue starts empty and grows with what waits in it, so an
// idle connection costs a few hundred bytes here.
type conn struct {
	h     *hub
	id    auth.Identity
	limit int

	mu       sync.Mutex
	items    []*event
	head     int
	overflow bool
	closed   bool
	// ping is set by the keep-alive wheel when a keep-alive is due.
	ping bool
	// wake has room for one signal: something was pushed, overflow, or a
	// keep-alive is due.
	wake chan struct{}

	// wakeDue[slot]: c waits in that wakeBatch (its mutex guards it): a
	// stream's burst, then its lazy events (hub.go).
	wakeDue [4]bool

	// kaSlot is the keep-alive wheel's slot holding c, -1 when none (the
	// wheel's mutex guards it).
	kaSlot int
	// onSignal, when set, wakes the stream after each signal on wake (a
	// stream on a taken-over connection waits in a read, not on wake).
	onSignal func()
}

func newConn(h *hub, id auth.Identity, limit int) *conn {
	return &conn{h: h, id: id, limit: limit, wake: make(chan struct{}, 1), kaSlot: -1}
}

// pingDue asks c's stream for a keep-alive (the wheel's tick).
func (c *conn) pingDue() {
	c.mu.Lock()
	c.ping = true
	c.mu.Unlock()
	c.signal()
}

// takePing reports whether a keep-alive is due and clears it.
func (c *conn) takePing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.ping
	c.ping = false
	return p
}

// push queues e without waking the stream (the hub wakes it at the end of
// the burst, wakeBatch) and returns how many events wait; false when the
// connection is gone or too far behind (then it is woken at once, to be
// told to reset by its own goroutine). Never blocks.
func (c *conn) push(e *event) (queued int, ok bool) {
	c.mu.Lock()
	if c.closed || c.overflow {
		c.mu.Unlock()
		return 0, false
	}
	if len(c.items)-c.head >= c.limit {
		c.overflow = true
		c.mu.Unlock()
		c.h.s.metrics.sseDropped.Inc()
		if hook := c.h.s.onOverflow; hook != nil {
			hook()
		}
		c.signal()
		return 0, false
	}
	c.items = append(c.items, e)
	queued = len(c.items) - c.head
	c.mu.Unlock()
	c.h.queued.Add(1)
	return queued, true
}

// signal wakes the stream. A wake-up already pending (not yet taken by the
// stream's wait) covers this one: onSignal runs only with a new one.
func (c *conn) signal() {
	select {
	case c.wake <- struct{}{}:
		if c.onSignal != nil {
			c.onSignal()
		}
	default:
	}
}

// pop returns the next queued event, or nil; overflowed reports that the
// client fell too far behind.
func (c *conn) pop() (e *event, overflowed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.overflow {
		return nil, true
	}
	if c.head == len(c.items) {
		return nil, false
	}
	e = c.items[c.head]
	c.items[c.head] = nil
	c.head++
	if c.head == len(c.items) {
		// Drained: keep a small backing array, give a large one back.
		if cap(c.items) > 64 {
			c.items = nil
		} else {
			c.items = c.items[:0]
		}
		c.head = 0
	}
	c.h.queued.Add(-1)
	return e, false
}

// idle reports whether nothing waits.
func (c *conn) idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.head == len(c.items) && !c.overflow
}

// drop closes the queue and returns how many events were still in it.
func (c *conn) drop() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.items) - c.head
	c.closed, c.items, c.head = true, nil, 0
	if n > 0 {
		c.h.s.metrics.sseDropped.Add(float64(n))
	}
	return n
}

// catchUpFilters are the subjects a resuming connection reads from stream:
// the tenant subjects of its practice (staff) or its own thread (patient),
// its own user state, and the pre-tenant base subjects of events published
// before the upgrade (decoded and checked one by one).
func catchUpFilters(id auth.Identity, stream int) []string {
	pt, ut := natsx.Token(id.Practice), natsx.Token(id.Principal())
	var out []string
	for _, base := range hubBases(stream) {
		out = append(out, base)
		switch {
		case base == natsx.SubjectConversationUser:
			out = append(out, base+"."+pt+"."+ut)
		case id.IsPatient():
			out = append(out, base+"."+pt+"."+ut)
			if base == natsx.SubjectMessageCreated {
				// A message without attachments (natsx.CreatedSubject).
				out = append(out, base+"."+pt+"."+ut+".>")
			}
		default:
			out = append(out, base+"."+pt+".>")
		}
	}
	return out
}

// catchUpBatch bounds the events one catch-up fetch holds.
const catchUpBatch = 64

// catchUp reads stream's events visible to id after from up to and
// including to with a short-lived consumer filtered to id's subjects, and
// calls each for every one in order.
func (h *hub) catchUp(ctx context.Context, id auth.Identity, stream int, from, to uint64, each func(*event) error) error {
	if from >= to {
		return nil
	}
	js := h.s.deps.JS
	name := streamNames()[stream]
	cctx, cancel := context.WithTimeout(ctx, upstreamTimeout)
	cons, err := js.CreateConsumer(cctx, name, jetstream.ConsumerConfig{
		FilterSubjects:    catchUpFilters(id, stream),
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from + 1,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: catchUpInactive,
		MemoryStorage:     true,
	})
	cancel()
	if err != nil {
		return err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), upstreamTimeout)
		_ = js.DeleteConsumer(dctx, name, cons.CachedInfo().Name)
		cancel()
	}()
	if cons.CachedInfo().NumPending == 0 {
		return nil
	}
	for {
		batch, err := cons.FetchNoWait(catchUpBatch)
		if err != nil {
			return err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			seq := md.Sequence.Stream
			if seq > to {
				return nil // the hub delivers the rest
			}
			if e := decodeEvent(h.log, stream, seq, m.Subject(), m.Data(), id.Practice); e != nil && e.visibleTo(id) {
				if err := each(e); err != nil {
					return err
				}
			}
			if seq == to || md.NumPending == 0 {
				return nil
			}
		}
		if err := batch.Error(); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
	}
}
