package gateway

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/policy/messageview"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// The /v1/events handler: limits, resume, catch-up, then the live events
// the hub (hub.go) queues on the connection (conn.go), each rendered for
// the caller and written by the SSE writer (sse.go); receipts in marks.go.

// Event types written on /v1/events.
const (
	EventMessageCreated      = "message.created"
	EventMessageUpdated      = "message.updated"
	EventConversationUpdated = "conversation.updated"
	// EventReset tells the client to reload: the stream ends after it.
	EventReset = "reset"
)

// Reasons carried by EventReset as {"reason":"…"}.
const (
	// ResetResumeWindowExceeded: Last-Event-ID is older than the streams keep.
	ResetResumeWindowExceeded = "RESUME_WINDOW_EXCEEDED"
	// ResetTooFarBehind: the client read too slowly and its buffer overflowed.
	ResetTooFarBehind = "TOO_FAR_BEHIND"
)

const (
	// sseWriteTimeout cuts off a client that stops reading.
	sseWriteTimeout = 30 * time.Second
	// upstreamTimeout bounds each call the stream makes (stream info,
	// ListConversations, MarkMessagesDelivered).
	upstreamTimeout = 5 * time.Second
	// pullBatch bounds the messages each hub consumer pulls ahead.
	pullBatch = 256
	// catchUpInactive removes a catch-up consumer its gateway lost.
	catchUpInactive = time.Minute
)

var errRender = errors.New("render failed")

// itemKind says what an event is.
type itemKind int

const (
	itemMessageCreated itemKind = iota + 1
	itemMessageUpdated
	itemConversation
	itemUserState
	// itemConversationRead is the caller's own markRead: never written,
	// it keeps the caller's unread counts true (convview.go).
	itemConversationRead
)

// eventStream is one /v1/events response.
type eventStream struct {
	s     *Server
	id    auth.Identity
	c     *conn
	marks *deliveryMarks
	// unflushed are the events buffered in the writer, not yet written.
	unflushed []written
	// raw is the taken-over connection, nil on net/http's path.
	raw *hijackedStream
	// views is the caller's per-thread state for conversation.updated
	// (convview.go); the stream's goroutine owns it.
	views convStates
	// md carries the caller's token on the stream's upstream calls
	// (streamToken).
	md metadata.MD
	// registered and counted: open registered the stream with the hub and
	// counted it in sseClients (shut undoes them).
	registered, counted bool
	// A parked stream's (startParked): its cursor between its goroutines,
	// and what ends it, once.
	cur      cursor
	finish   func()
	finished bool
}

// events serves GET /v1/events as Server-Sent Events (SPEC.md section 3).
// An HTTP/1.1 stream is taken over from net/http once it is accepted
// (hijack.go): one goroutine of its own serves it, and net/http's goroutine and
// buffers for the connection are freed. HTTP/2 streams stay on net/http.
func (s *Server) events(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	id, ok := auth.FromContext(r.Context())
	if !ok {
		s.writeError(w, r, unauthenticated("Sign in: the request carries no bearer token"))
		return
	}
	var resume *cursor
	if v := lastEventID(r); v != "" {
		c, err := parseCursor(v)
		if err != nil {
			s.writeError(w, r, invalidArgument("Last-Event-ID is not a cursor of this stream; reconnect without it"))
			return
		}
		resume = &c
	}
	if !s.trackStream() {
		s.metrics.sseRefused.WithLabelValues(refusedShutdown).Inc()
		s.writeError(w, r, unavailable("The gateway is shutting down; reconnect"))
		return
	}
	release, refused := s.limits.acquire(id.Practice + "\x00" + id.Principal())
	if refused != "" {
		s.streams.Done()
		s.refuseStream(w, r, refused)
		return
	}
	// end frees the stream's limit slot and lets Shutdown return; it runs
	// when the stream ends, on whichever goroutine serves it.
	end := func() {
		release()
		s.streams.Done()
	}

	ctx := r.Context()
	if err := s.hub.ready(ctx); err != nil {
		end()
		s.log.Warn("event stream: live updates unavailable", zap.Error(err))
		s.metrics.sseRefused.WithLabelValues(refusedUnavailable).Inc()
		s.writeError(w, r, unavailable("Live updates are unavailable right now; try again shortly"))
		return
	}
	if resume != nil {
		head, err := s.streamHeads(ctx)
		if err != nil {
			end()
			s.log.Warn("event stream: stream info", zap.Error(err))
			s.writeError(w, r, unavailable("Live updates are unavailable right now; try again shortly"))
			return
		}
		if !resume.resumableD(head[streamD]) || !resumable(resume.c, head[streamC]) {
			defer end()
			sw := newSSEWriter(w, &s.sseBufs)
			sw.detach()
			defer sw.attach()
			sw.start()
			s.metrics.sseResets.WithLabelValues(ResetResumeWindowExceeded).Inc()
			_ = sw.reset(ResetResumeWindowExceeded)
			return
		}
	}

	st := &eventStream{s: s, id: id}
	if hs, err := s.hijackStream(w, r); err == nil {
		// From here the connection is the stream's own: served by one fresh
		// goroutine (small stack), and this handler returns.
		st.raw = hs
		if hs.poller != nil {
			// Served by goroutines only while it has something to do.
			go st.startParked(end, resume)
			return
		}
		go func() {
			defer end()
			defer hs.close()
			defer func() {
				// As net/http would: a panic ends this stream, not the process.
				if p := recover(); p != nil {
					s.log.Error("panic", zap.String(logkeys.ErrorID, ids.New()), zap.String("route", routeEvents),
						zap.Any("panic", p), zap.Stack("stack"))
				}
			}()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st.serve(ctx, hs.sw, resume)
		}()
		return
	} else if !errors.Is(err, errNoHijack) {
		end()
		s.log.Warn("event stream: take over the connection", zap.Error(err))
		return
	}
	defer end()
	sw := newSSEWriter(w, &s.sseBufs)
	sw.detach()
	defer sw.attach()
	st.serve(ctx, sw, resume)
}

// serve runs an accepted stream: registered with the hub, the hello,
// the catch-up of a resume, then the live events until the stream ends.
func (st *eventStream) serve(ctx context.Context, sw *sseWriter, resume *cursor) {
	defer st.shut()
	if cur, ok := st.open(ctx, sw, resume); ok {
		st.run(ctx, sw, cur)
	}
}

// shut undoes what open did.
func (st *eventStream) shut() {
	if st.counted {
		st.s.metrics.sseClients.Dec()
	}
	if st.registered {
		st.s.hub.unregister(st.c)
	}
	if st.marks != nil {
		st.marks.wait()
	}
}

// open registers the stream with the hub and writes the hello and the
// catch-up of a resume: false when the stream ends there. shut undoes it.
func (st *eventStream) open(ctx context.Context, sw *sseWriter, resume *cursor) (cursor, bool) {
	s, id := st.s, st.id
	sw.writes = s.metrics.sseWrites
	st.c = newConn(s.hub, id, s.cfg.EventBuffer)
	if st.raw != nil {
		st.c.onSignal = st.raw.wake
	}
	st.md = streamToken(id)
	st.marks = newDeliveryMarks(func(conv string, seq int64) { s.markDelivered(id, st.md, conv, seq) })
	// Registered first: from here every event after pos reaches the queue.
	pos := s.hub.register(st.c)
	st.registered = true
	if st.raw == nil {
		sw.start() // a taken-over connection's head goes out with the hello
	}

	s.metrics.sseClients.Inc()
	st.counted = true
	s.log.Debug("event stream open", zap.String(logkeys.Practice, id.Practice), zap.String(logkeys.Actor, id.Principal()),
		zap.Bool("resumed", resume != nil))
	cur := pos
	if resume != nil {
		cur = *resume
	}
	if err := sw.hello(cur); err != nil {
		return cur, false
	}
	if resume != nil {
		// Catch up to where the hub's live events begin for this stream.
		for _, sp := range []struct {
			stream   int
			from, to uint64
		}{{streamD, cur.at(streamD), pos.d}, {streamC, cur.c, pos.c}} {
			err := s.hub.catchUp(ctx, id, sp.stream, sp.from, sp.to, func(first *event) error {
				for e := first; e != nil; e = e.more { // each part of a stream message
					if cur.covers(e) {
						continue // a part given before the cursor (inside this message)
					}
					cur = cur.after(e)
					if err := st.write(ctx, sw, e, cur); err != nil {
						return err
					}
					if sw.full() {
						if err := st.flush(sw); err != nil {
							return err
						}
					}
				}
				return nil
			})
			if err == nil {
				err = st.flush(sw)
			}
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("event stream: catch-up", zap.Error(err))
				}
				return cur, false
			}
		}
		// Everything up to pos visible to the caller is written; live
		// events at or below a cursor that is ahead of pos are skipped.
		if pos.d >= cur.d {
			cur.d, cur.dk = pos.d, 0
		}
		cur.c = max(cur.c, pos.c)
	}
	return cur, true
}

// trackStream counts a new event stream unless shutdown has begun.
func (s *Server) trackStream() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shuttingDown() {
		return false
	}
	s.streams.Add(1)
	return true
}

// streamHeads are the delivery and conversation streams' states.
func (s *Server) streamHeads(ctx context.Context) ([2]jetstream.StreamState, error) {
	ctx, cancel := context.WithTimeout(ctx, upstreamTimeout)
	defer cancel()
	var out [2]jetstream.StreamState
	for i, name := range [2]string{natsx.StreamDelivery, natsx.StreamConversation} {
		str, err := s.deps.JS.Stream(ctx, name)
		if err != nil {
			return out, err
		}
		info, err := str.Info(ctx)
		if err != nil {
			return out, err
		}
		out[i] = info.State
	}
	return out, nil
}

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

// parkingStreams counts the process's open streams that park while idle
// (startParked).
var parkingStreams atomic.Int64

// ParkingStreams is how many event streams of this process's gateways are
// open and park while idle (hijack.go): they hold no goroutine stack, but
// their heap (~2.6 KiB each while idle; BENCHMARKS.md, idle23), which a
// memory governor may allow for as it does for stacks.
func ParkingStreams() int64 { return parkingStreams.Load() }

// startParked serves a stream on a taken-over connection that parks in
// the idle poller while it has nothing to do (hijack.go): from here it is
// served by a goroutine only while it writes or looks.
func (st *eventStream) startParked(end func(), resume *cursor) {
	hs := st.raw
	ctx, cancel := context.WithCancel(context.Background())
	var expiry *time.Timer
	st.finish = func() {
		if st.finished {
			return
		}
		st.finished = true
		parkingStreams.Add(-1)
		if expiry != nil {
			expiry.Stop()
		}
		cancel()
		st.shut()
		hs.close()
		end()
	}
	hs.resume = func() { st.step(ctx) }
	parkingStreams.Add(1)
	defer st.recoverParked()
	cur, ok := st.open(ctx, hs.sw, resume)
	if !ok {
		st.finish()
		return
	}
	st.cur = cur
	if !st.id.Expiry.IsZero() {
		expiry = time.AfterFunc(time.Until(st.id.Expiry), hs.expire)
	}
	st.step(ctx)
}

// step writes what is queued and what is due, then parks the stream, or
// ends it. One goroutine at a time runs it (hijackedStream.state).
func (st *eventStream) step(ctx context.Context) {
	defer st.recoverParked()
	hs, sw := st.raw, st.raw.sw
	for {
		if !st.drain(ctx, sw, &st.cur) {
			st.finish()
			return
		}
		out, ok := hs.look(st)
		if !ok {
			parked, err := hs.park()
			if err != nil {
				st.s.log.Warn("event stream: park the idle stream", zap.Error(err))
				st.finish()
				return
			}
			if parked {
				return // st belongs to the next wake's goroutine
			}
			continue
		}
		switch out {
		case waitEnd:
			st.finish()
			return
		case waitExpired:
			_ = sw.comment("token expired; sign in again")
			st.finish()
			return
		case waitWoken:
			if !st.woken(sw, &st.cur) {
				st.finish()
				return
			}
		}
	}
}

// recoverParked, as net/http would: a panic ends this stream, not the
// process.
func (st *eventStream) recoverParked() {
	if p := recover(); p != nil {
		st.s.log.Error("panic", zap.String(logkeys.ErrorID, ids.New()), zap.String("route", routeEvents),
			zap.Any("panic", p), zap.Stack("stack"))
		st.finish()
	}
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

// renderMessage is e's message as the caller may see it, rendered once per
// viewer class (hub.go) and shared by every connection of the class: the
// encode does not multiply with connections. The class is the caller's own
// (messageview.Locked), so a locked message stays locked.
func (st *eventStream) renderMessage(e *event) ([]byte, error) {
	now, window := time.Now(), st.s.cfg.StepUpWindow
	class := viewUnlocked
	if messageview.Locked(e.message, st.id, now, window) {
		class = viewLocked
	}
	v := &e.views[class]
	v.once.Do(func() {
		if e.pc != nil {
			e.pc.rendered.Add(1)
		}
		m := e.message
		if e.raw != nil {
			// Rendered from the event's bytes as ForViewer's view of the
			// class (wireView), or, for a shape that is not read there,
			// unmarshalled and rendered as below.
			if v.data = st.s.renderWire(e.raw, class == viewLocked); v.data != nil {
				return
			}
			m = &deliveryv1.Message{}
			if v.err = proto.Unmarshal(e.raw, m); v.err != nil {
				return
			}
		}
		// ForViewer depends on the viewer only through Locked, which is
		// this class for the caller at now. Unlocked, it is a copy of the
		// message with locked=false: the event's own message when that
		// already holds (it is never modified), without the copy.
		if class == viewLocked || m.GetLocked() {
			m = messageview.ForViewer(m, st.id, now, window)
		}
		v.data, v.err = st.s.render("message", m)
	})
	if v.err != nil || v.data == nil {
		return nil, errRender
	}
	return v.data, nil
}

// renderWire is render("message", …) of a deliveryv1.Message encoded as
// raw, as messageview.Apply leaves it for a viewer it is locked for or not
// (appendWireJSON); nil when appendWireJSON does not read it.
func (s *Server) renderWire(raw []byte, locked bool) []byte {
	hint := &s.renderHint[0]
	out := make([]byte, 0, max(512, hint.Load()+128))
	out = append(out, `{"message":`...)
	out, ok := appendWireJSON(out, (*deliveryv1.Message)(nil).ProtoReflect().Descriptor(), raw, wireView{message: true, locked: locked})
	if !ok {
		return nil
	}
	out = append(out, '}')
	hint.Store(int64(min(len(out), 64<<10)))
	return out
}

// render is {"<field>": <resource>} with the REST API's JSON options,
// encoded straight after the prefix (what s.marshaler.Marshal writes for a
// proto message, without its two copies), in a buffer the size of the
// field's last rendering (renderHint): one allocation, no growth.
func (s *Server) render(field string, m proto.Message) ([]byte, error) {
	hint := &s.renderHint[0]
	if field == "conversation" {
		hint = &s.renderHint[1]
	}
	out := make([]byte, 0, max(512, hint.Load()+128))
	out = append(out, `{"`...)
	out = append(out, field...)
	out = append(out, `":`...)
	if b, ok := appendJSON(out, m.ProtoReflect()); ok {
		b = append(b, '}')
		hint.Store(int64(min(len(b), 64<<10)))
		return b, nil
	}
	out, err := s.marshaler.MarshalOptions.MarshalAppend(out, m) // out: still just the prefix
	if err != nil {
		return nil, err
	}
	return append(out, '}'), nil
}
