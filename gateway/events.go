package gateway

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/policy/messageview"
)

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
	// GetConversation, MarkMessagesDelivered).
	upstreamTimeout = 5 * time.Second
	// pullBatch bounds the messages each consumer pulls ahead.
	pullBatch = 128
)

// itemKind says what a queued event is.
type itemKind int

const (
	itemMessageCreated itemKind = iota + 1
	itemMessageUpdated
	itemConversation
)

// streamItem is one visible event waiting to be written.
type streamItem struct {
	kind itemKind
	// delivery is true for the delivery stream, false for the conversation stream.
	delivery bool
	seq      uint64
	// message, for itemMessageCreated and itemMessageUpdated (not yet
	// filtered for the viewer).
	message *deliveryv1.Message
	// conversation, for itemConversation: the thread whose caller view is fetched.
	conversation string
}

// messageEvent is what MessageCreated and MessageUpdated share.
type messageEvent interface {
	proto.Message
	GetMeta() *typev1.EventMeta
	GetMessage() *deliveryv1.Message
	GetPatient() string
}

// eventStream is one /v1/events connection. NATS callbacks decode and
// filter events and queue the visible ones without ever blocking; the
// handler's goroutine writes them. A full queue means the client is too far
// behind: it gets "event: reset" and the stream ends, and nobody else waits.
type eventStream struct {
	s     *Server
	id    auth.Identity
	items chan streamItem
	// overflow is closed when an event did not fit in items.
	overflow     chan struct{}
	overflowOnce sync.Once
	// seenD and seenC are the last sequence each callback has handled
	// (stored after queueing), so an idle stream's cursor can move past
	// events the caller may not see.
	seenD, seenC atomic.Uint64
	marks        *deliveryMarks
}

// events serves GET /v1/events as Server-Sent Events (SPEC.md section 3).
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
		s.writeError(w, r, unavailable("The gateway is shutting down; reconnect"))
		return
	}
	defer s.streams.Done()

	ctx := r.Context()
	head, err := s.streamHeads(ctx)
	if err != nil {
		s.log.Warn("event stream: stream info", zap.Error(err))
		s.writeError(w, r, unavailable("Live updates are unavailable right now; try again shortly"))
		return
	}
	sw := newSSEWriter(w)
	sw.detach()
	defer sw.attach()
	if resume != nil {
		if !resumable(resume.d, head.delivery) || !resumable(resume.c, head.conversation) {
			sw.start()
			s.metrics.sseResets.WithLabelValues(ResetResumeWindowExceeded).Inc()
			_ = sw.reset(ResetResumeWindowExceeded)
			return
		}
	}
	from := cursor{d: head.delivery.LastSeq, c: head.conversation.LastSeq}
	if resume != nil {
		from = *resume
	}

	st := &eventStream{
		s:        s,
		id:       id,
		items:    make(chan streamItem, s.cfg.EventBuffer),
		overflow: make(chan struct{}),
		marks:    newDeliveryMarks(),
	}
	stop, err := st.subscribe(ctx, from)
	if err != nil {
		s.log.Warn("event stream: subscribe", zap.Error(err))
		s.writeError(w, r, unavailable("Live updates are unavailable right now; try again shortly"))
		return
	}
	defer stop()

	// Receipts are marked in the background; the stream never waits for them.
	marksDone := make(chan struct{})
	stopMarks := make(chan struct{})
	go func() {
		defer close(marksDone)
		st.marks.run(stopMarks, func(conv string, seq int64) { st.markDelivered(ctx, conv, seq) })
	}()
	defer func() { close(stopMarks); <-marksDone }()

	// The consumers exist: from here on every event reaches this response.
	sw.start()
	s.metrics.sseClients.Inc()
	defer s.metrics.sseClients.Dec()
	s.log.Debug("event stream open", zap.String(logkeys.Practice, id.Practice), zap.String(logkeys.Actor, id.Principal()),
		zap.Bool("resumed", resume != nil))
	if err := sw.hello(from); err != nil {
		return
	}
	st.run(ctx, sw, from)
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

// heads are the two streams' states when a connection starts.
type heads struct {
	delivery, conversation jetstream.StreamState
}

func (s *Server) streamHeads(ctx context.Context) (heads, error) {
	ctx, cancel := context.WithTimeout(ctx, upstreamTimeout)
	defer cancel()
	var h heads
	for _, x := range []struct {
		name string
		into *jetstream.StreamState
	}{{natsx.StreamDelivery, &h.delivery}, {natsx.StreamConversation, &h.conversation}} {
		str, err := s.deps.JS.Stream(ctx, x.name)
		if err != nil {
			return h, err
		}
		info, err := str.Info(ctx)
		if err != nil {
			return h, err
		}
		*x.into = info.State
	}
	return h, nil
}

// subscribe starts an ordered consumer on each stream right after from, and
// returns a function that stops both and waits until no callback runs.
func (st *eventStream) subscribe(ctx context.Context, from cursor) (func(), error) {
	js := st.s.deps.JS
	type sub struct {
		stream string
		cons   jetstream.Consumer
		cc     jetstream.ConsumeContext
	}
	var subs []*sub
	stop := func() {
		for _, x := range subs {
			if x.cc != nil {
				x.cc.Stop()
				<-x.cc.Closed()
			}
			// Ordered consumers are ephemeral; delete ours now rather than
			// leave it to the inactivity threshold.
			if info := x.cons.CachedInfo(); info != nil {
				dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = js.DeleteConsumer(dctx, x.stream, info.Name)
				cancel()
			}
		}
	}
	specs := []struct {
		stream   string
		subjects []string
		start    uint64
		handler  jetstream.MessageHandler
	}{
		{natsx.StreamDelivery, []string{natsx.SubjectMessageCreated, natsx.SubjectMessageUpdated}, from.d + 1, st.onDelivery},
		{natsx.StreamConversation, []string{natsx.SubjectConversationCreated, natsx.SubjectConversationUpdated,
			natsx.SubjectConversationUser}, from.c + 1, st.onConversation},
	}
	for _, sp := range specs {
		cons, err := js.OrderedConsumer(ctx, sp.stream, jetstream.OrderedConsumerConfig{
			FilterSubjects: sp.subjects,
			DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:    sp.start,
		})
		if err != nil {
			stop()
			return nil, err
		}
		x := &sub{stream: sp.stream, cons: cons}
		subs = append(subs, x)
		cc, err := cons.Consume(sp.handler, jetstream.PullMaxMessages(pullBatch),
			jetstream.ConsumeErrHandler(st.onConsumeError(sp.stream)))
		if err != nil {
			stop()
			return nil, err
		}
		x.cc = cc
	}
	return stop, nil
}

func (st *eventStream) onConsumeError(stream string) jetstream.ConsumeErrHandler {
	return func(_ jetstream.ConsumeContext, err error) {
		// The ordered consumer recreates itself after the position it
		// delivered last; this is for the record only.
		st.s.log.Debug("event stream consumer", zap.String(logkeys.Stream, stream), zap.Error(err))
	}
}

// enqueue queues a visible event without blocking.
func (st *eventStream) enqueue(it streamItem) {
	select {
	case st.items <- it:
	default:
		st.overflowOnce.Do(func() {
			close(st.overflow)
			if hook := st.s.onOverflow; hook != nil {
				hook()
			}
		})
	}
}

// onDelivery handles a delivery-stream event (NATS callback).
func (st *eventStream) onDelivery(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	seq := md.Sequence.Stream
	defer st.seenD.Store(seq)
	var ev messageEvent
	kind := itemMessageCreated
	switch m.Subject() {
	case natsx.SubjectMessageCreated:
		ev = &deliveryv1.MessageCreated{}
	case natsx.SubjectMessageUpdated:
		ev, kind = &deliveryv1.MessageUpdated{}, itemMessageUpdated
	default:
		return
	}
	if err := proto.Unmarshal(m.Data(), ev); err != nil {
		st.s.log.Warn("undecodable event skipped", zap.String(logkeys.Stream, natsx.StreamDelivery),
			zap.Uint64("seq", seq), zap.Error(err))
		return
	}
	if ev.GetMessage() == nil || !st.seesThread(ev.GetMeta(), ev.GetPatient()) {
		return
	}
	st.enqueue(streamItem{kind: kind, delivery: true, seq: seq, message: ev.GetMessage()})
}

// onConversation handles a conversation-stream event (NATS callback).
func (st *eventStream) onConversation(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	seq := md.Sequence.Stream
	defer st.seenC.Store(seq)
	var name string
	switch m.Subject() {
	case natsx.SubjectConversationCreated, natsx.SubjectConversationUpdated:
		var ev interface {
			proto.Message
			GetMeta() *typev1.EventMeta
			GetConversation() *conversationv1.Conversation
		} = &conversationv1.ConversationUpdated{}
		if m.Subject() == natsx.SubjectConversationCreated {
			ev = &conversationv1.ConversationCreated{}
		}
		if err := proto.Unmarshal(m.Data(), ev); err != nil {
			st.s.log.Warn("undecodable event skipped", zap.String(logkeys.Stream, natsx.StreamConversation),
				zap.Uint64("seq", seq), zap.Error(err))
			return
		}
		if !st.seesThread(ev.GetMeta(), ev.GetConversation().GetPatient()) {
			return
		}
		name = ev.GetConversation().GetName()
	case natsx.SubjectConversationUser:
		ev := &conversationv1.ConversationUserStateChanged{}
		if err := proto.Unmarshal(m.Data(), ev); err != nil {
			st.s.log.Warn("undecodable event skipped", zap.String(logkeys.Stream, natsx.StreamConversation),
				zap.Uint64("seq", seq), zap.Error(err))
			return
		}
		// Pin, mute and read state are the user's own.
		if ev.GetMeta().GetPractice() != st.id.Practice || ev.GetUser() != st.id.Principal() {
			return
		}
		name = ev.GetConversation()
	default:
		return
	}
	if name == "" {
		return
	}
	st.enqueue(streamItem{kind: itemConversation, seq: seq, conversation: name})
}

// seesThread is the tenancy rule: events of the caller's practice only, and
// for a patient only their own thread ("patients/<sub>").
func (st *eventStream) seesThread(meta *typev1.EventMeta, patient string) bool {
	if meta.GetPractice() == "" || meta.GetPractice() != st.id.Practice {
		return false
	}
	if st.id.IsPatient() {
		return patient == st.id.Principal()
	}
	return st.id.IsStaff() || st.id.IsSystem()
}

// run writes queued events until the client leaves, the token expires, the
// gateway shuts down, or the client falls too far behind.
func (st *eventStream) run(ctx context.Context, sw *sseWriter, cur cursor) {
	s := st.s
	keepAlive := time.NewTicker(s.cfg.KeepAlive)
	defer keepAlive.Stop()
	var expired <-chan time.Time
	if !st.id.Expiry.IsZero() {
		t := time.NewTimer(time.Until(st.id.Expiry))
		defer t.Stop()
		expired = t.C
	}
	for {
		if st.overflowed() {
			st.tooFarBehind(sw)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-s.closing:
			return
		case <-expired:
			_ = sw.comment("token expired; sign in again")
			return
		case <-st.overflow:
			st.tooFarBehind(sw)
			return
		case it := <-st.items:
			if it.delivery {
				cur.d = it.seq
			} else {
				cur.c = it.seq
			}
			if err := st.write(ctx, sw, it, cur); err != nil {
				return
			}
		case <-keepAlive.C:
			// Idle: move the cursor past events this caller does not see, so
			// a later resume starts close to the head.
			seen := cursor{d: st.seenD.Load(), c: st.seenC.Load()}
			moved := false
			if len(st.items) == 0 && !st.overflowed() {
				if seen.d > cur.d {
					cur.d, moved = seen.d, true
				}
				if seen.c > cur.c {
					cur.c, moved = seen.c, true
				}
			}
			if err := sw.ping(cur, moved); err != nil {
				return
			}
		}
	}
}

func (st *eventStream) overflowed() bool {
	select {
	case <-st.overflow:
		return true
	default:
		return false
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
func (st *eventStream) write(ctx context.Context, sw *sseWriter, it streamItem, cur cursor) error {
	s := st.s
	switch it.kind {
	case itemMessageCreated, itemMessageUpdated:
		view := messageview.ForViewer(it.message, st.id, time.Now(), s.cfg.StepUpWindow)
		data, err := st.render("message", view)
		if err != nil {
			s.log.Error("render message event", zap.String(logkeys.Message, it.message.GetName()), zap.Error(err))
			return nil
		}
		event := EventMessageUpdated
		if it.kind == itemMessageCreated {
			event = EventMessageCreated
		}
		if err := sw.event(event, cur, data); err != nil {
			return err
		}
		s.metrics.sseEvents.WithLabelValues(event).Inc()
		if it.kind == itemMessageCreated && isRecipient(st.id, it.message) {
			if conv := parentOf(it.message.GetName()); conv != "" && it.message.GetSeq() > 0 {
				st.marks.add(conv, int64(it.message.GetSeq()))
			}
		}
	case itemConversation:
		conv, err := st.conversation(ctx, it.conversation)
		if err != nil {
			switch status.Code(err) {
			case codes.NotFound, codes.PermissionDenied:
			case codes.Canceled:
				return err
			default:
				s.log.Warn("event stream: get conversation", zap.String(logkeys.Conversation, it.conversation),
					zap.Stringer(logkeys.Code, status.Code(err)))
			}
			return nil
		}
		data, err := st.render("conversation", conv)
		if err != nil {
			s.log.Error("render conversation event", zap.String(logkeys.Conversation, it.conversation), zap.Error(err))
			return nil
		}
		if err := sw.event(EventConversationUpdated, cur, data); err != nil {
			return err
		}
		s.metrics.sseEvents.WithLabelValues(EventConversationUpdated).Inc()
	}
	return nil
}

// render is {"<field>": <resource>} with the REST API's JSON options.
func (st *eventStream) render(field string, m proto.Message) ([]byte, error) {
	b, err := st.s.marshaler.Marshal(m)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(b)+len(field)+5)
	out = append(out, `{"`...)
	out = append(out, field...)
	out = append(out, `":`...)
	out = append(out, b...)
	out = append(out, '}')
	return out, nil
}

// withToken makes an upstream call as the stream's caller.
func (st *eventStream) withToken(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, auth.MetadataKey, "Bearer "+st.id.Token)
}

// conversation fetches the thread as the caller sees it (their unreadCount,
// pinned, muted). It lists the one row rather than getting it: a pushed list
// row is not the caller opening the thread, which the audit log records.
func (st *eventStream) conversation(ctx context.Context, name string) (*conversationv1.Conversation, error) {
	ctx, cancel := context.WithTimeout(st.withToken(ctx), upstreamTimeout)
	defer cancel()
	resp, err := st.s.conversations.ListConversations(ctx, &conversationv1.ListConversationsRequest{Names: []string{name}, PageSize: 1})
	if err != nil {
		return nil, err
	}
	if len(resp.GetConversations()) == 0 {
		return nil, status.Error(codes.NotFound, "Conversation not found")
	}
	return resp.GetConversations()[0], nil
}

// markDelivered records that the caller received messages up to seq. It
// runs off the stream's goroutine and outlives a disconnect by at most
// upstreamTimeout.
func (st *eventStream) markDelivered(ctx context.Context, conv string, seq int64) {
	ctx, cancel := context.WithTimeout(st.withToken(context.WithoutCancel(ctx)), upstreamTimeout)
	defer cancel()
	_, err := st.s.delivery.MarkMessagesDelivered(ctx, &deliveryv1.MarkMessagesDeliveredRequest{Parent: conv, UpToSeq: seq})
	if err != nil {
		st.s.log.Warn("mark delivered", zap.String(logkeys.Conversation, conv), zap.Int64("up_to_seq", seq),
			zap.String(logkeys.Actor, st.id.Principal()), zap.Stringer(logkeys.Code, status.Code(err)))
	}
}

// isRecipient reports whether the caller is on the receiving side of m: a
// patient receiving from the practice, or staff receiving from the patient.
func isRecipient(id auth.Identity, m *deliveryv1.Message) bool {
	switch {
	case id.IsPatient():
		return m.GetSender() != id.Principal()
	case id.IsStaff():
		return strings.HasPrefix(m.GetSender(), "patients/")
	}
	return false
}

// parentOf is "conversations/c" of "conversations/c/messages/m".
func parentOf(message string) string {
	i := strings.Index(message, "/messages/")
	if i <= 0 {
		return ""
	}
	return message[:i]
}

// deliveryMarks coalesces "delivered up to seq" per conversation so that a
// burst of messages costs one call per thread.
type deliveryMarks struct {
	mu      sync.Mutex
	pending map[string]int64
	done    map[string]int64
	wake    chan struct{}
}

func newDeliveryMarks() *deliveryMarks {
	return &deliveryMarks{pending: map[string]int64{}, done: map[string]int64{}, wake: make(chan struct{}, 1)}
}

// add asks for conv to be marked delivered up to seq; it never blocks.
func (d *deliveryMarks) add(conv string, seq int64) {
	d.mu.Lock()
	if seq > d.pending[conv] && seq > d.done[conv] {
		d.pending[conv] = seq
	}
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// run calls mark for pending entries until stop is closed, then marks what
// is left once and returns.
func (d *deliveryMarks) run(stop <-chan struct{}, mark func(conv string, seq int64)) {
	for {
		select {
		case <-d.wake:
			d.flush(mark)
		case <-stop:
			d.flush(mark)
			return
		}
	}
}

func (d *deliveryMarks) flush(mark func(conv string, seq int64)) {
	d.mu.Lock()
	batch := d.pending
	d.pending = map[string]int64{}
	for conv, seq := range batch {
		d.done[conv] = seq
	}
	d.mu.Unlock()
	for conv, seq := range batch {
		mark(conv, seq)
	}
}

// sseWriter writes the text/event-stream framing, flushing every block and
// bounding every write.
type sseWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf bytes.Buffer
}

func newSSEWriter(w http.ResponseWriter) *sseWriter {
	return &sseWriter{w: w, rc: http.NewResponseController(w)}
}

// detach frees a long response from the embedding server's WriteTimeout,
// if any (a whole-response deadline would end every stream); every write
// gets its own deadline instead.
func (sw *sseWriter) detach() { _ = sw.rc.SetWriteDeadline(time.Time{}) }

// attach clears the per-write deadline before the connection is reused.
func (sw *sseWriter) attach() { _ = sw.rc.SetWriteDeadline(time.Time{}) }

// start sends the response headers.
func (sw *sseWriter) start() {
	h := sw.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	h.Set("X-Content-Type-Options", "nosniff")
	sw.w.WriteHeader(http.StatusOK)
}

// send writes the buffered block and flushes it.
func (sw *sseWriter) send() error {
	defer sw.buf.Reset()
	if err := sw.rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	if _, err := sw.w.Write(sw.buf.Bytes()); err != nil {
		return err
	}
	return sw.rc.Flush()
}

// hello flushes the headers with an id-only block: it dispatches no event
// but gives EventSource a Last-Event-ID before the first event, so a
// reconnect misses nothing even then.
func (sw *sseWriter) hello(cur cursor) error {
	sw.buf.WriteString(": connected\nid: ")
	sw.buf.WriteString(cur.String())
	sw.buf.WriteString("\n\n")
	return sw.send()
}

// event writes one event; data is single-line JSON.
func (sw *sseWriter) event(event string, cur cursor, data []byte) error {
	sw.buf.WriteString("event: ")
	sw.buf.WriteString(event)
	sw.buf.WriteString("\nid: ")
	sw.buf.WriteString(cur.String())
	sw.buf.WriteString("\ndata: ")
	sw.buf.Write(data)
	sw.buf.WriteString("\n\n")
	return sw.send()
}

// ping is the keep-alive comment; when the cursor moved it also updates
// the client's Last-Event-ID (an id-only block dispatches nothing).
func (sw *sseWriter) ping(cur cursor, withID bool) error {
	sw.buf.WriteString(": ping\n")
	if withID {
		sw.buf.WriteString("id: ")
		sw.buf.WriteString(cur.String())
		sw.buf.WriteString("\n")
	}
	sw.buf.WriteString("\n")
	return sw.send()
}

// comment writes an SSE comment line.
func (sw *sseWriter) comment(text string) error {
	sw.buf.WriteString(": ")
	sw.buf.WriteString(text)
	sw.buf.WriteString("\n\n")
	return sw.send()
}

// reset tells the client to reload; the stream ends after it.
func (sw *sseWriter) reset(reason string) error {
	sw.buf.WriteString("event: " + EventReset + "\ndata: {\"reason\":\"")
	sw.buf.WriteString(reason)
	sw.buf.WriteString("\"}\n\n")
	return sw.send()
}
