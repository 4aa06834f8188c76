package natsx

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// BatchHandler handles messages in the order they arrived, typically in one
// database transaction, and returns once that is committed: one error per
// message (nil: ack; ErrPoison: terminate; other: redeliver).
type BatchHandler func(ctx context.Context, msgs []jetstream.Msg) []error

// DefaultMaxBatch is ConsumeBatch's batch size when the spec sets none.
const DefaultMaxBatch = 64

// ConsumeBatch runs a durable, explicitly acked consumer until ctx ends,
// handing h whatever messages have arrived (at least one, at most maxBatch)
// in stream order, one batch at a time. Messages are acked only after h
// returns, so a batch is acked once its commit is durable; a crash before
// then redelivers the whole batch, which h must tolerate (idempotent by
// event id). It is how a consumer commits once per batch instead of once
// per message, without giving up the stream's order.
func ConsumeBatch(ctx context.Context, js jetstream.JetStream, log *zap.Logger, spec ConsumerSpec, maxBatch int, h BatchHandler) error {
	if maxBatch <= 0 {
		maxBatch = DefaultMaxBatch
	}
	_, ackAll := js.(soleConsumer)
	var (
		cons  jetstream.Consumer
		cu    catchUp
		err   error
		saver *positionSaver
	)
	if ackAll && spec.Positions != nil {
		// In memory, its position in the service's database (Positions).
		var start uint64
		var created int64
		cons, cu, start, created, err = memoryDurable(ctx, js, spec, spec.Positions,
			log.With(zap.String(logkeys.Stream, spec.Stream), zap.String(logkeys.Consumer, spec.Durable+AckAllSuffix)))
		if err == nil && cons != nil {
			saver = newPositionSaver(spec.Positions, spec.Durable, start, created,
				log.With(zap.String(logkeys.Stream, spec.Stream), zap.String(logkeys.Consumer, spec.Durable+AckAllSuffix)))
			defer saver.close() // after the last batch: a clean stop records where it ended
		}
	} else {
		cons, cu, err = durableAcked(ctx, js, spec, true, ackAll)
	}
	if err != nil || cons == nil {
		return err // nil: stopped while starting
	}
	log = log.With(zap.String(logkeys.Stream, spec.Stream), zap.String(logkeys.Consumer, cons.CachedInfo().Name))
	settle := func(m jetstream.Msg, err error) { settleMsg(ctx, log, m, err) }
	var runs *ackRuns
	if ackAll {
		runs = &ackRuns{ctx: ctx, log: log, failed: map[uint64]struct{}{}}
		if saver != nil {
			runs.onAck = saver.acked
		}
		settle = runs.settle
	}
	// With several filter subjects the durable may deliver every event
	// (this or another replica started it behind: durable, CatchUpPending):
	// the others are acked without the handler.
	filtered := len(cu.filter) > 1
	var narrowOnce sync.Once
	narrowIn := func(md *jetstream.MsgMetadata) {
		if md == nil || md.NumPending > 0 {
			return
		}
		narrowOnce.Do(func() {
			// Caught up: the filter again, in place (position and acks stay).
			cfg := cons.CachedInfo().Config
			cfg.FilterSubjects = cu.filter
			uctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if _, err := js.UpdateConsumer(uctx, spec.Stream, cfg); err != nil {
				log.Warn("caught up; consumer not narrowed (next start does)", zap.Error(err))
				return
			}
			log.Info("caught up unfiltered; consumer filter set again", zap.Strings("filter", cu.filter))
		})
	}
	if cu.wide {
		log.Info("far behind: catching up unfiltered", zap.Strings("filter", cu.filter))
	}
	skipped := make([]jetstream.Msg, 0, maxBatch)

	// The client delivers messages one at a time from one goroutine; they
	// queue here (the callback blocks when the queue is full, so at most
	// maxBatch wait beside the batch being handled) and the worker takes
	// everything queued as one batch.
	queue := make(chan jetstream.Msg, maxBatch)
	closed := make(chan struct{})
	done := make(chan struct{})
	ends := make([]func(error), 0, maxBatch)
	mctxs := make([]context.Context, 0, maxBatch)
	handle := func(batch []jetstream.Msg) {
		if filtered {
			skipped = skipped[:0]
			n := 0
			for _, m := range batch {
				if matches(cu.filter, m.Subject()) {
					batch[n] = m
					n++
				} else {
					skipped = append(skipped, m)
				}
			}
			batch = batch[:n]
			defer func() {
				for _, m := range skipped {
					settle(m, nil)
				}
				clear(skipped)
				if runs != nil {
					runs.flush()
				}
			}()
			if n == 0 {
				return
			}
		}
		// Each event carries the trace of the request that caused it: its
		// consumer span covers the batch's handling and commit, and the
		// handler finds its context with MessageContexts.
		ends, mctxs = ends[:0], mctxs[:0]
		for _, m := range batch {
			mctx, end := ctx, noEnd
			if hdr := m.Headers(); hdr != nil {
				mctx, end = telemetry.StartConsumer(ctx, hdr, spec.Durable, m.Subject())
			}
			ends, mctxs = append(ends, end), append(mctxs, mctx)
		}
		errs := h(context.WithValue(ctx, messageContextsKey{}, mctxs), batch)
		clear(mctxs)
		for i, m := range batch {
			var err error
			if i < len(errs) {
				err = errs[i]
			} else {
				err = errors.New("batch handler returned no result for the message")
			}
			ends[i](err)
			settle(m, err)
		}
		if runs != nil && !filtered {
			runs.flush() // filtered: once the skipped ones are settled too
		}
	}
	go func() {
		defer close(done)
		batch := make([]jetstream.Msg, 0, maxBatch)
		for {
			select {
			case m := <-queue:
				batch = append(batch[:0], m)
			fill:
				for len(batch) < maxBatch {
					select {
					case m := <-queue:
						batch = append(batch, m)
					default:
						break fill
					}
				}
				handle(batch)
				clear(batch) // do not hold the payloads until the next batch
			case <-closed:
				// No more deliveries: hand over what is still queued.
				batch = batch[:0]
				for len(queue) > 0 {
					batch = append(batch, <-queue)
				}
				if len(batch) > 0 {
					handle(batch)
				}
				return
			}
		}
	}()
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if cu.wide {
			md, _ := m.Metadata()
			narrowIn(md)
		}
		queue <- m
	})
	if err != nil {
		close(closed)
		<-done
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("consume %s: %w", spec.Durable, err)
	}
	<-ctx.Done()
	cc.Drain()
	<-cc.Closed()
	close(closed)
	<-done
	return nil
}

type messageContextsKey struct{}

// MessageContexts returns, inside a BatchHandler, the context of each message
// of the batch (in order): ctx with the message's consumer span when its
// event carries a trace, so that what the handler writes for that message
// (outbox rows) continues the message's trace. Nil outside a BatchHandler;
// valid only until the handler returns.
func MessageContexts(ctx context.Context) []context.Context {
	mctxs, _ := ctx.Value(messageContextsKey{}).([]context.Context)
	return mctxs
}

// settleMsg acks, terminates or naks m by its handler's err (Consume and
// ConsumeBatch): poison is terminated, a shutdown naks for another instance,
// any other failure is redelivered with a growing delay.
func settleMsg(ctx context.Context, log *zap.Logger, m jetstream.Msg, err error) {
	switch {
	case err == nil:
		_ = m.Ack()
	case errors.Is(err, ErrPoison):
		log.Error("poison message terminated", zap.String(logkeys.Subject, m.Subject()), zap.Error(err))
		_ = m.Term()
	default:
		md, _ := m.Metadata()
		nak(ctx, log, m, md, err)
	}
}

// nak hands back m, whose handler failed with err: at once when ctx has
// ended (shutting down: another consumer instance, or the next start, takes
// it), else with a delay growing with its deliveries (md; nil: not known).
func nak(ctx context.Context, log *zap.Logger, m jetstream.Msg, md *jetstream.MsgMetadata, err error) {
	if ctx.Err() != nil {
		_ = m.Nak()
		return
	}
	delay := time.Second
	if md != nil {
		delay = min(time.Duration(md.NumDelivered)*500*time.Millisecond, 30*time.Second)
	}
	log.Warn("handler failed; redelivering", zap.String(logkeys.Subject, m.Subject()), zap.Error(err))
	_ = m.NakWithDelay(delay)
}

// SoleConsumer marks js as the only client that consumes the durables of
// its server: the all-in-one's embedded server, whose services run in its
// one process, one ConsumeBatch per durable. ConsumeBatch then acks a
// batch with one message (AckAll policy: an ack of an event acks every
// earlier one the durable delivered) instead of one per event. Never for
// a server whose durables several processes share (replicas of a service):
// one replica's ack would ack what another has not committed. The server
// must reset consumers (nats-server 2.14+: ConsumeBatch resets a durable
// left with deliveries unacknowledged to its ack floor).
func SoleConsumer(js jetstream.JetStream) jetstream.JetStream { return soleConsumer{js} }

type soleConsumer struct{ jetstream.JetStream }

// ackRuns settles the messages of an AckAll durable (ConsumeBatch of a
// SoleConsumer): after each batch, one ack of the latest event handled,
// unless an event before it failed and has not been handled since (an
// ack would ack it too): then nothing is acked until it has been, and
// the ack that follows covers everything handled meanwhile. A failed
// event is naked (with a growing delay) and delivered again meanwhile; a
// poison one is logged and covered by the next ack (terminated when it is
// the latest). Deliveries held unacked past AckWait come again and are
// handled again: handlers are idempotent.
type ackRuns struct {
	ctx    context.Context
	log    *zap.Logger
	failed map[uint64]struct{} // stream sequences naked and not handled since
	// latest is the handled event of the highest stream sequence not
	// acknowledged yet (nil: none); poison, that it was poison.
	latest    jetstream.Msg
	latestSeq uint64
	poison    bool
	// onAck, when set, is told each ack's stream sequence: every event
	// delivered up to it is handled (a memory durable's Positions).
	onAck func(seq uint64)
}

func (r *ackRuns) settle(m jetstream.Msg, err error) {
	md, mErr := m.Metadata()
	if mErr != nil { // not a JetStream delivery: nothing to ack
		return
	}
	seq := md.Sequence.Stream
	switch {
	case err == nil, errors.Is(err, ErrPoison):
		if err != nil {
			r.log.Error("poison message skipped", zap.String(logkeys.Subject, m.Subject()), zap.Error(err))
		}
		delete(r.failed, seq)
		if seq > r.latestSeq || r.latest == nil {
			r.latest, r.latestSeq, r.poison = m, seq, err != nil
		}
	default:
		r.failed[seq] = struct{}{}
		nak(r.ctx, r.log, m, md, err)
	}
}

// flush acks the latest handled event once no failed one precedes it.
func (r *ackRuns) flush() {
	if r.latest == nil {
		return
	}
	for seq := range r.failed {
		if seq < r.latestSeq {
			return
		}
	}
	if r.poison {
		_ = r.latest.Term()
	} else {
		_ = r.latest.Ack()
	}
	if r.onAck != nil {
		r.onAck(r.latestSeq)
	}
	r.latest, r.latestSeq, r.poison = nil, 0, false
}
