package gateway

import (
	"sync"
	"time"
)

// keepAliveWheel is the gateway's one keep-alive scheduler: a timer wheel
// of slots walked by one goroutine, instead of a ticker per event stream.
// A connection sits in one slot; each tick the wheel marks the next slot's
// connections ping-due and wakes them, so every connection is due once per
// interval and thousands of idle streams cost one timer, with their pings
// spread over the interval in small batches. The goroutine runs only while
// connections are registered.
type keepAliveWheel struct {
	tick time.Duration

	mu    sync.Mutex
	slots []map[*conn]struct{}
	next  int // the slot the next tick visits
	count int
	stop  chan struct{} // closed when the last connection leaves
}

// keepAliveSlotTick is the wheel's target tick: short enough that a batch
// is small (5,000 streams every 15 s is ~33 per tick), long enough that an
// idle gateway barely wakes.
const keepAliveSlotTick = 100 * time.Millisecond

func newKeepAliveWheel(interval time.Duration) *keepAliveWheel {
	n := max(1, min(int(interval/keepAliveSlotTick), 600))
	w := &keepAliveWheel{tick: max(interval/time.Duration(n), time.Millisecond), slots: make([]map[*conn]struct{}, n)}
	for i := range w.slots {
		w.slots[i] = map[*conn]struct{}{}
	}
	return w
}

// add schedules c's pings: the first one interval from now (the slot just
// visited comes round again last).
func (w *keepAliveWheel) add(c *conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	slot := (w.next + len(w.slots) - 1) % len(w.slots)
	w.slots[slot][c] = struct{}{}
	c.kaSlot = slot
	w.count++
	if w.count == 1 {
		w.stop = make(chan struct{})
		go w.run(w.stop)
	}
}

// remove ends c's pings.
func (w *keepAliveWheel) remove(c *conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c.kaSlot < 0 {
		return
	}
	delete(w.slots[c.kaSlot], c)
	c.kaSlot = -1
	w.count--
	if w.count == 0 {
		close(w.stop)
	}
}

func (w *keepAliveWheel) run(stop chan struct{}) {
	t := time.NewTicker(w.tick)
	defer t.Stop()
	var due []*conn
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		w.mu.Lock()
		for c := range w.slots[w.next] {
			due = append(due, c)
		}
		w.next = (w.next + 1) % len(w.slots)
		w.mu.Unlock()
		for i, c := range due {
			c.pingDue()
			due[i] = nil
		}
		due = due[:0]
	}
}
