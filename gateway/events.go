package gateway

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/grpc/metadata"

	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// The /v1/events handler: limits, resume, catch-up, then the live events
// the hub (hub.go) queues on the connection (conn.go). The stream's loop
// (eventloop.go; parked.go for streams that park while idle) renders each
// for the caller (eventrender.go) and writes it with the SSE writer
// (sse.go); receipts in marks.go.

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
