package bench

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// runReads is read mode: read receipts flat out. Each thread is first
// filled with its share of cfg.Messages staff messages (not measured; the
// server is then let go quiet). Then each thread's patient marks read one
// message further per call (upTo the next message, so every call is a real
// receipt turning exactly one message READ), closed loop, all threads at
// once, while each thread's staff sender holds its own /v1/events stream
// open. A receipt counts when its message.updated with status READ reaches
// the sender's stream; markRead → that event is the Stream latency.
func runReads(ctx context.Context, cfg Config, threads []*thread, marker readMarker, transport string, srv *serverWatch) (*Result, error) {
	for _, th := range threads {
		th.stream.countReceiptsOf(th.conv)
	}
	names, err := prefill(ctx, threads, func(i int) int { // thread i's share of the receipts
		n := cfg.Messages / len(threads)
		if i < cfg.Messages%len(threads) {
			n++
		}
		return n
	}, false)
	if err != nil {
		return nil, err
	}
	if _, err := srv.waitQuiet(ctx, time.Minute); err != nil {
		return nil, err
	}
	if err := srv.start(ctx); err != nil {
		return nil, err
	}
	defer srv.stop()

	if _, ok := marker.(httpMarker); ok {
		// Through the gateway: one connection per thread, by hand (rawMarker).
		if rm := newRawMarker(threads); rm != nil {
			defer rm.close()
			marker = rm
		}
	}
	res := &Result{Mode: ModeRead, Practice: cfg.Practice, Transport: transport, Senders: cfg.Senders, IdleStreams: cfg.IdleStreams, Errors: map[string]int{}}
	var (
		mu      sync.Mutex
		acks    []time.Duration
		marked  = map[string]time.Time{} // message name → its markRead's start
		lastAck time.Time
		done    atomic.Int64
	)
	start := time.Now()
	var wg sync.WaitGroup
	for i, th := range threads {
		wg.Go(func() {
			for _, upTo := range names[i] {
				if ctx.Err() != nil || (cfg.Duration > 0 && time.Since(start) > cfg.Duration) {
					return
				}
				t0 := time.Now()
				err := marker.markRead(ctx, th, upTo)
				d := time.Since(t0)
				mu.Lock()
				if err != nil {
					res.Errors[reasonOf(err)]++
				} else {
					acks = append(acks, d)
					marked[upTo] = t0
					if end := t0.Add(d); end.After(lastAck) {
						lastAck = end
					}
				}
				mu.Unlock()
				if n := done.Add(1); cfg.Progress != nil {
					cfg.Progress(int(n), cfg.Messages)
				}
			}
		})
	}
	wg.Wait()
	res.Attempted, res.Acked = int(done.Load()), len(acks)
	if !lastAck.IsZero() {
		res.Seconds = lastAck.Sub(start).Seconds()
		res.SendsPerS = float64(res.Acked) / res.Seconds
	}
	res.Ack = summarize(acks)

	// Wait until every acknowledged markRead's receipt reached its sender.
	deadline := time.Now().Add(cfg.Wait)
	expect := make([][]string, len(threads))
	for i, th := range threads {
		for _, name := range names[i] {
			if _, ok := marked[name]; ok {
				expect[i] = append(expect[i], name)
			}
		}
		th.stream.waitFor(ctx, expect[i], true, deadline)
	}
	var lat []time.Duration
	var lastSeen time.Time
	for i, th := range threads {
		seen := th.stream.snapshot()
		for _, name := range expect[i] {
			at, ok := seen.reads[name]
			if !ok {
				res.Lost++
				continue
			}
			lat = append(lat, at.Sub(marked[name]))
			if at.After(lastSeen) {
				lastSeen = at
			}
		}
		res.Duplicated += seen.readDups
		// Each markRead of a thread turns its next message READ: the
		// receipts must reach the sender in message order.
		res.OutOfOrder += outOfOrder(expect[i], seen.readOrder)
		res.Resets += seen.resets
		res.Reconnects += seen.reconnects
		res.AckedNames = append(res.AckedNames, expect[i]...)
	}
	res.Stream = summarize(lat)
	res.Receipts = len(lat)
	if s := lastSeen.Sub(start).Seconds(); s > 0 {
		res.ReceiptsPerS = float64(res.Receipts) / s
	}
	res.Server = srv.finish(ctx, res.Acked, lastAck)
	return res, nil
}
