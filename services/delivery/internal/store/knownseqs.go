package store

import "sync"

// maxKnownThreads bounds seqCache (~2 MiB at ~120 B an entry): past it,
// the cache starts again empty (the next batch of each thread is written
// by insertBatch, which learns its counter again).
const maxKnownThreads = 16384

// seqCache holds each thread's counter (its last message's seq) as this
// process last committed it, so that a batch of sends can carry its seqs
// and be written without reading them back (insertKnown). It only learns
// from commits, and a counter only rises, so a known value is never above
// the database's; when it is below (another replica or a send alone
// wrote since), insertKnown's statement fails and the batch is written
// again by insertBatch.
type seqCache struct {
	mu   sync.Mutex
	last map[threadKey]int64
}

// plan gives each of batch's sends its seq when every thread's counter is
// known and no request id is in it twice.
func (c *seqCache) plan(batch []*queuedSend) ([]int64, bool) {
	if repeats(batch) {
		return nil, false
	}
	seqs := make([]int64, len(batch))
	next := make(map[threadKey]int64, 4)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, b := range batch {
		t := threadKey{b.m.Practice, b.m.ConversationID}
		n, ok := next[t]
		if !ok {
			if n, ok = c.last[t]; !ok {
				return nil, false
			}
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
	if c.last == nil || len(c.last) >= maxKnownThreads {
		c.last = make(map[threadKey]int64)
	}
	for _, b := range batch {
		t := threadKey{b.m.Practice, b.m.ConversationID}
		if b.out.Seq > c.last[t] {
			c.last[t] = b.out.Seq
		}
	}
}

// forget drops thread t's counter.
func (c *seqCache) forget(t threadKey) {
	c.mu.Lock()
	delete(c.last, t)
	c.mu.Unlock()
}

// forgetBatch drops the counters of batch's threads.
func (c *seqCache) forgetBatch(batch []*queuedSend) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range batch {
		delete(c.last, threadKey{b.m.Practice, b.m.ConversationID})
	}
}
