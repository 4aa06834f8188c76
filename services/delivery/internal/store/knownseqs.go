package store

import (
	"sync"
	"time"
)

// maxKnownThreads bounds seqCache (~2 MiB at ~120 B an entry): past it,
// the cache starts again empty (the next batch of each thread is written
// by insertBatch, which learns its counter again).
const maxKnownThreads = 16384

// knownBackoff is how long a thread whose known counter turned out stale
// is written by insertBatch only. The gateway spreads calls over delivery
// replicas round-robin, so with several replicas a thread's consecutive
// sends land on different ones and each replica's known value is mostly
// stale: without the pause every batch into such a thread would pay a
// failed write before the one that stores it. With it, a replica tries
// once per thread and pause.
const knownBackoff = 30 * time.Second

// seqCache holds each thread's counter (its last message's seq) as this
// process last committed it, so that a batch of sends can carry its seqs
// and be written without reading them back (insertKnown). It only learns
// from commits, and a counter only rises, so a known value is never above
// the database's; when it is below (another replica or a send alone
// wrote since), insertKnown's statement fails and the batch is written
// again by insertBatch, and the thread waits knownBackoff before it is
// tried again.
type seqCache struct {
	mu      sync.Mutex
	threads map[threadKey]knownThread
	now     func() time.Time // time.Now; tests set it
}

type knownThread struct {
	last  int64     // the counter; 0: not known
	pause time.Time // insertBatch only until then
}

func (c *seqCache) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// plan gives each of batch's sends its seq when every thread's counter is
// known (and not paused) and no request id is in it twice.
func (c *seqCache) plan(batch []*queuedSend) ([]int64, bool) {
	if repeats(batch) {
		return nil, false
	}
	seqs := make([]int64, len(batch))
	next := make(map[threadKey]int64, 4)
	c.mu.Lock()
	defer c.mu.Unlock()
	var now time.Time
	for i, b := range batch {
		t := threadKey{b.m.Practice, b.m.ConversationID}
		n, ok := next[t]
		if !ok {
			k := c.threads[t]
			if k.last == 0 {
				return nil, false
			}
			if !k.pause.IsZero() {
				if now.IsZero() {
					now = c.clock()
				}
				if now.Before(k.pause) {
					return nil, false
				}
			}
			n = k.last
		}
		n++
		next[t], seqs[i] = n, n
	}
	return seqs, true
}

// learn records the seqs of a committed batch.
func (c *seqCache) learn(batch []*queuedSend) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.threads == nil || len(c.threads) >= maxKnownThreads {
		c.threads = make(map[threadKey]knownThread)
	}
	for _, b := range batch {
		t := threadKey{b.m.Practice, b.m.ConversationID}
		if k := c.threads[t]; b.out.Seq > k.last {
			k.last = b.out.Seq
			c.threads[t] = k
		}
	}
}

// forget drops thread t's counter.
func (c *seqCache) forget(t threadKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if k, ok := c.threads[t]; ok {
		k.last = 0
		c.threads[t] = k
	}
}

// failed drops the counters of batch's threads, whose known write failed,
// and pauses them for knownBackoff.
func (c *seqCache) failed(batch []*queuedSend) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.threads == nil {
		c.threads = make(map[threadKey]knownThread)
	}
	pause := c.clock().Add(knownBackoff)
	for _, b := range batch {
		c.threads[threadKey{b.m.Practice, b.m.ConversationID}] = knownThread{pause: pause}
	}
}
