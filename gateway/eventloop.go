package gateway

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// A stream's loop: it waits for queued events, renders each for its
// caller (eventrender.go) and writes them with the SSE writer (sse.go).

// run writes queued events until the client leaves, the token expires, the
// gateway shuts down, or the client falls too far behind.
func (st *eventStream) run(ctx context.Context, sw *sseWriter, cur cursor) {
	var expired <-chan time.Time
	if !st.id.Expiry.IsZero() {
		if st.raw != nil {
			t := time.AfterFunc(time.Until(st.id.Expiry), st.raw.expire)
			defer t.Stop()
		} else {
			t := time.NewTimer(time.Until(st.id.Expiry))
			defer t.Stop()
			expired = t.C
		}
	}
	for {
		if !st.drain(ctx, sw, &cur) {
			return
		}
		switch st.wait(ctx, expired) {
		case waitEnd:
			return
		case waitExpired:
			_ = sw.comment("token expired; sign in again")
			return
		case waitWoken:
			// Events, overflow, or the keep-alive wheel (keepalive.go).
			if !st.woken(sw, &cur) {
				return
			}
		}
	}
}

// drain writes everything queued, in one write per batch (several writes
// only past sseFlushAt bytes): false when the stream ends (its client
// fell too far behind, or its connection failed).
func (st *eventStream) drain(ctx context.Context, sw *sseWriter, cur *cursor) bool {
	for {
		e, overflowed := st.c.pop()
		if overflowed {
			if st.flush(sw) == nil {
				st.tooFarBehind(sw)
			}
			return false
		}
		if e == nil {
			break
		}
		if cur.covers(e) {
			continue // already written (a resume cursor ahead of the hub)
		}
		*cur = cur.after(e)
		if err := st.write(ctx, sw, e, *cur); err != nil {
			return false
		}
		if sw.full() {
			if err := st.flush(sw); err != nil {
				return false
			}
		}
	}
	return st.flush(sw) == nil
}

// woken writes a keep-alive if one is due: false when the connection failed.
func (st *eventStream) woken(sw *sseWriter, cur *cursor) bool {
	if !st.c.takePing() {
		return true
	}
	// Idle: move the cursor past events this caller does not see, so a
	// later resume starts close to the head. The hub's position is read
	// first: every event up to it is in the queue or written.
	pos := st.s.hub.position()
	moved := false
	if st.c.idle() {
		if pos.d > cur.d || (pos.d == cur.d && cur.dk != 0) {
			cur.d, cur.dk, moved = pos.d, 0, true
		}
		if pos.c > cur.c {
			cur.c, moved = pos.c, true
		}
	}
	return sw.ping(*cur, moved) == nil
}

// waitOutcome is what ended a stream's wait.
type waitOutcome int

const (
	// waitWoken: events, overflow, or a keep-alive is due.
	waitWoken waitOutcome = iota
	// waitEnd: the client left or the gateway is shutting down.
	waitEnd
	// waitExpired: the caller's token expired.
	waitExpired
)

// wait blocks until the stream has something to do or must end. A stream
// on a taken-over connection waits in a read of it (hijack.go).
func (st *eventStream) wait(ctx context.Context, expired <-chan time.Time) waitOutcome {
	if st.raw != nil {
		return st.raw.wait(st)
	}
	select {
	case <-ctx.Done():
		return waitEnd
	case <-st.s.closing:
		return waitEnd
	case <-expired:
		return waitExpired
	case <-st.c.wake:
		return waitWoken
	}
}

func (st *eventStream) tooFarBehind(sw *sseWriter) {
	st.s.metrics.sseResets.WithLabelValues(ResetTooFarBehind).Inc()
	st.s.log.Info("event stream reset: client too far behind", zap.String(logkeys.Actor, st.id.Principal()),
		zap.Int("buffer", st.s.cfg.EventBuffer))
	_ = sw.reset(ResetTooFarBehind)
}

// write renders one event as the caller may see it and writes it. Errors
// are the client's connection failing; an event that turns out invisible
// (the conversation is not the caller's) is skipped.
func (st *eventStream) write(ctx context.Context, sw *sseWriter, e *event, cur cursor) error {
	s := st.s
	if e.span.IsValid() {
		// The recipient's stream: the last hop of the send's trace.
		var span trace.Span
		ctx, span = telemetry.Tracer().Start(trace.ContextWithRemoteSpanContext(ctx, e.span), "sse write",
			trace.WithAttributes(attribute.String("clinicchat.viewer", st.id.Principal())))
		defer span.End()
	}
	switch e.kind {
	case itemMessageCreated, itemMessageUpdated:
		recipient := e.kind == itemMessageCreated && isRecipient(st.id, e.message)
		var popped time.Time
		if recipient && !e.dispatched.IsZero() {
			popped = time.Now()
		}
		data, err := st.renderMessage(e)
		if err != nil {
			s.log.Error("render message event", zap.String(logkeys.Message, e.message.GetName()), zap.Error(err))
			return nil
		}
		event := EventMessageUpdated
		if e.kind == itemMessageCreated {
			event = EventMessageCreated
		}
		sw.event(event, cur, data)
		w := written{event: event, dispatched: e.dispatched, popped: popped}
		if recipient {
			if conv := parentOf(e.message.GetName()); conv != "" && e.message.GetSeq() > 0 {
				w.conv, w.seq = conv, int64(e.message.GetSeq())
			}
		}
		st.unflushed = append(st.unflushed, w)
	case itemConversation, itemUserState:
		known, ok := st.knownView(e)
		if !ok {
			// What is buffered goes out before the (upstream) fetch; a view
			// built from the event keeps the batch going.
			if err := st.flush(sw); err != nil {
				return err
			}
		}
		data, err := st.conversationView(ctx, e, known, ok)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			switch status.Code(err) {
			case codes.NotFound, codes.PermissionDenied:
			default:
				s.log.Warn("event stream: conversation view", zap.String(logkeys.Conversation, e.conversation),
					zap.Stringer(logkeys.Code, status.Code(err)), zap.Error(err))
			}
			return nil
		}
		sw.event(EventConversationUpdated, cur, data)
		st.unflushed = append(st.unflushed, written{event: EventConversationUpdated})
	case itemConversationRead:
		st.views.read(e)
	}
	return nil
}

// written is an event buffered by the writer: counted, and its delivery
// marked, once it is written to the client.
type written struct {
	event string
	conv  string // the conversation to mark delivered up to seq, if any
	seq   int64
	// dispatched and popped time the recipient's message.created (zero
	// otherwise): when the fan-out took it and this stream took it off
	// its queue (hub.go, eventStages).
	dispatched, popped time.Time
}

// flush writes the buffered events and then counts them and marks them
// delivered.
func (st *eventStream) flush(sw *sseWriter) error {
	if err := sw.flush(); err != nil {
		return err
	}
	var now time.Time
	for i, w := range st.unflushed {
		if !w.popped.IsZero() {
			if now.IsZero() {
				now = time.Now()
			}
			st.s.hub.stages.observe(stageQueued, w.popped.Sub(w.dispatched))
			st.s.hub.stages.observe(stageWritten, now.Sub(w.popped))
		}
		st.s.metrics.sseEventsBy[w.event].Inc()
		if w.conv != "" {
			st.marks.add(w.conv, w.seq)
		}
		st.unflushed[i] = written{}
	}
	if cap(st.unflushed) > 64 {
		st.unflushed = nil
	} else {
		st.unflushed = st.unflushed[:0]
	}
	return nil
}
