package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/eventwire"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// The hub is the gateway's one fan-out: one ephemeral JetStream consumer per
// stream for the whole process (never one per connection). Each event's
// subject carries its practice and patient (natsx.Tenant), so an event of a
// practice with no open stream here is skipped without being decoded; an
// event that has an audience is decoded once and queued, without blocking,
// on the connections of that practice allowed to see it (staff; the
// thread's patient). A connection whose queue is full is dropped with
// "reset" (TOO_FAR_BEHIND); the hub never waits for one.

// The two streams the event path reads, as indexes of per-stream arrays.
const (
	streamD = 0 // delivery: message.created, message.updated
	streamC = 1 // conversation: conversation.created/updated/read, userstate.changed
)

func streamNames() [2]string { return [2]string{natsx.StreamDelivery, natsx.StreamConversation} }

// hubBases are the base subjects (natsx) each stream's consumers read: the
// product's echoes (receipt status, thread activity) have kinds of their
// own, and the audited kinds still carry a person's updates and every
// update published before the echo kinds existed.
func hubBases(stream int) []string {
	if stream == streamD {
		return []string{natsx.SubjectMessageCreated, natsx.SubjectMessageUpdated, natsx.SubjectMessageStatusEcho}
	}
	return []string{natsx.SubjectConversationCreated, natsx.SubjectConversationUpdated, natsx.SubjectConversationEcho,
		natsx.SubjectConversationUser, natsx.SubjectConversationRead}
}

// hubFilter is the subject filter of the hub's consumer of the stream:
// hubBases in both forms (natsx.Filter). The delivery stream's three kinds
// are exactly its "<prefix>.delivery.message" subjects, so one wildcard
// takes them: a consumer re-created behind a backlog (after a NATS outage)
// then costs JetStream ~10× less per event than with six filter subjects
// (BENCHMARKS.md, filter11; TestHubFilterIsHubBases).
func hubFilter(stream int) []string {
	if stream == streamD {
		return []string{natsx.Prefix() + ".delivery.message.>"}
	}
	return natsx.Filter(hubBases(stream)...)
}

// event is one decoded, visible-to-someone event, shared by every
// connection it is queued on. It is never modified after dispatch.
type event struct {
	kind   itemKind
	stream int
	seq    uint64
	// practice is the practice id (decoded); patient the thread's patient
	// ("patients/p"); user the owner of a userstate change or the reader of
	// a conversation.read.
	practice, patient, user string
	// updated is a conversation.updated or conversation.created event's
	// payload: the thread's shared fields, and which message it projects
	// (convview.go renders a user's view from it without a fetch).
	updated *conversationv1.ConversationUpdated
	// message, for message events (not yet filtered for the viewer). With
	// raw set it holds only what routing reads (messageEventHead): the
	// message is raw, its encoding in the event, rendered from there.
	message *deliveryv1.Message
	raw     []byte
	// part is the message's place (1-based) among the messages of a
	// stream message that carries several (a receipt advance's echo,
	// MessageUpdated.messages), 0 for a stream message of one; last
	// marks the final part, more links to the next one. Each part is an
	// event of its own on the queues, with its own cursor (cursor.dk).
	part uint32
	last bool
	more *event
	// conversation, for conversation events: the thread whose view is
	// fetched once per user (convViews).
	conversation string
	// action is the event's EventMeta action (updated carries no meta:
	// decodeEvent reads it from the wire).
	action string
	// readTo is a conversation.read's watermark (up_to_seq): every message
	// of the thread at or below it from the other side is read.
	readTo int64

	// span is the fan-out span of the event when it was traced (invalid
	// otherwise): each connection's write is its child.
	span trace.SpanContext
	// dispatched is when the fan-out took a message.created off its
	// consumer (zero for other kinds): the recipient's stream times its
	// queueing and write from it (eventStages).
	dispatched time.Time
	// wroteAt is the event's EventMeta time (message.created only): when
	// the sender's transaction wrote it.
	wroteAt time.Time

	// views are the message rendered once per viewer class and shared by
	// every connection of that class (eventrender.go, renderMessage).
	views [viewClasses]renderedView
	// convViews are a conversation event's thread as each user sees it
	// (their unreadCount, pinned, muted): fetched and rendered once per
	// user and shared by that user's tabs, keyed by practice, principal
	// and role. (Views built from the event are eventViews.)
	convMu    sync.Mutex
	convViews map[string]*renderedView
	// eventViews are the views built from the event, by what they depend
	// on besides it (convview.go).
	eventViews map[ownView]*renderedView
	// pc counts the renders of a dispatched event (nil for catch-up).
	pc *practiceConns
}

// convView is the shared view of a conversation event for the user of id.
func (e *event) convView(id auth.Identity) *renderedView {
	return e.convViewKeyed(id.Practice + "\x00" + id.Principal() + "\x00" + id.Role)
}

// convViewKeyed is the shared view of a conversation event under key.
func (e *event) convViewKeyed(key string) *renderedView {
	e.convMu.Lock()
	defer e.convMu.Unlock()
	return sharedView(&e.convViews, key)
}

// eventView is the shared view of a conversation event built from it for
// viewers of own.
func (e *event) eventView(own ownView) *renderedView {
	e.convMu.Lock()
	defer e.convMu.Unlock()
	return sharedView(&e.eventViews, own)
}

// sharedView is (*m)[k], made (with the map) when missing. Locked by the
// caller (convMu).
func sharedView[K comparable](m *map[K]*renderedView, k K) *renderedView {
	if *m == nil {
		*m = map[K]*renderedView{}
	}
	v := (*m)[k]
	if v == nil {
		v = &renderedView{}
		(*m)[k] = v
	}
	return v
}

// Viewer classes of a message event: how a message looks depends on the
// viewer only through messageview.Locked, so every viewer who may read it
// (staff; the thread's patient when it is theirs, not sensitive, or they
// stepped up) shares one rendering, and every patient it is locked for
// shares the other.
const (
	viewUnlocked = iota
	viewLocked
	viewClasses
)

// renderedView is one class's encoded view of an event.
type renderedView struct {
	once sync.Once
	data []byte
	err  error
}

// visibleTo is the tenancy rule: events of the caller's practice only; for
// a patient only their own thread; a user's pin/mute/read only to them.
func (e *event) visibleTo(id auth.Identity) bool {
	if e.practice == "" || e.practice != id.Practice {
		return false
	}
	if e.kind == itemUserState || e.kind == itemConversationRead {
		return id.IsPrincipal(e.user)
	}
	if id.IsPatient() {
		return id.IsPrincipal(e.patient)
	}
	return id.IsStaff() || id.IsSystem()
}

// decodeEvent decodes a message of the hub's subjects; nil for subjects it
// does not stream and for undecodable payloads (logged). practice is the
// practice the caller expects the event to be of ("" when it does not
// know): the event's practice is then that string, not a copy. A stream
// message that carries several messages (a receipt advance's echo) is the
// first one's event, the others' linked from it (event.more).
func decodeEvent(log *zap.Logger, stream int, seq uint64, subject string, data []byte, practice string) *event {
	base := natsx.Base(subject)
	e := &event{stream: stream, seq: seq}
	var parts []*event // a stream message of several messages: e, then the others
	// The meta is read from the wire where it can be (eventwire.Unmarshal)
	// and the rest of the event unmarshalled without it.
	var head eventwire.Meta
	// decoded unmarshals data into ev, or logs why it is skipped.
	decoded := func(streamName string, ev eventwire.Event) bool {
		var err error
		if head, err = eventwire.Unmarshal(data, ev, practice, actionActivity, actionAssign, actionArchive); err != nil {
			log.Warn("undecodable event skipped", zap.String(logkeys.Stream, streamName), zap.Uint64("seq", seq), zap.Error(err))
			return false
		}
		return true
	}
	switch base {
	case natsx.SubjectMessageCreated, natsx.SubjectMessageUpdated, natsx.SubjectMessageStatusEcho:
		e.kind = itemMessageCreated
		if base != natsx.SubjectMessageCreated {
			e.kind = itemMessageUpdated
		}
		// The Message is kept as it came (rendered from its bytes:
		// renderMessage), only what routing needs read from it.
		if h, rest, ok := eventwire.SplitMeta(data, practice, actionActivity, actionAssign, actionArchive); ok {
			if raw, patient, msg, ok := messageEventHead(rest); ok {
				head, e.message, e.raw, e.patient = h, msg, raw, patient
				break
			}
			if base != natsx.SubjectMessageCreated {
				if raws, patient, msgs, ok := messageBatchHead(rest); ok {
					head, e.message, e.raw, e.patient = h, msgs[0], raws[0], patient
					parts = make([]*event, len(msgs))
					for i := range msgs {
						parts[i] = &event{message: msgs[i], raw: raws[i]}
					}
					parts[0] = e
					break
				}
			}
		}
		var ev interface {
			proto.Message
			GetMeta() *typev1.EventMeta
			GetMessage() *deliveryv1.Message
			GetPatient() string
		} = &deliveryv1.MessageCreated{}
		if base != natsx.SubjectMessageCreated {
			ev = &deliveryv1.MessageUpdated{}
		}
		if !decoded(natsx.StreamDelivery, ev) {
			return nil
		}
		e.message, e.patient = ev.GetMessage(), ev.GetPatient()
		if u, ok := ev.(*deliveryv1.MessageUpdated); ok && len(u.GetMessages()) > 0 {
			// A receipt advance's echo: message (if any), then messages.
			for _, m := range append([]*deliveryv1.Message{u.GetMessage()}, u.GetMessages()...) {
				if m != nil {
					parts = append(parts, &event{message: m})
				}
			}
			e.message, parts[0] = parts[0].message, e
		}
		if e.message == nil {
			return nil
		}
	case natsx.SubjectConversationCreated, natsx.SubjectConversationUpdated, natsx.SubjectConversationEcho:
		var ev interface {
			proto.Message
			GetMeta() *typev1.EventMeta
			GetConversation() *conversationv1.Conversation
		} = &conversationv1.ConversationUpdated{}
		if base == natsx.SubjectConversationCreated {
			ev = &conversationv1.ConversationCreated{}
		}
		if !decoded(natsx.StreamConversation, ev) {
			return nil
		}
		e.kind = itemConversation
		e.conversation, e.patient = ev.GetConversation().GetName(), ev.GetConversation().GetPatient()
		if u, ok := ev.(*conversationv1.ConversationUpdated); ok {
			e.updated = u
		}
	case natsx.SubjectConversationRead:
		ev := &conversationv1.ConversationRead{}
		if !decoded(natsx.StreamConversation, ev) {
			return nil
		}
		e.kind = itemConversationRead
		e.conversation, e.user, e.readTo = ev.GetConversation(), ev.GetReader(), ev.GetUpToSeq()
	case natsx.SubjectConversationUser:
		ev := &conversationv1.ConversationUserStateChanged{}
		if !decoded(natsx.StreamConversation, ev) {
			return nil
		}
		e.kind = itemUserState
		e.conversation, e.user = ev.GetConversation(), ev.GetUser()
	default:
		return nil
	}
	if e.kind != itemMessageCreated && e.kind != itemMessageUpdated && e.conversation == "" {
		return nil
	}
	e.practice, e.action = head.Practice, head.Action
	if e.kind == itemMessageCreated {
		e.wroteAt = head.Time
	}
	for i, p := range parts {
		// The parts of a stream message of several: the same event but for
		// the message, each its own (rendered and written on its own).
		if i > 0 {
			p.kind, p.stream, p.seq, p.practice, p.patient, p.action = e.kind, e.stream, e.seq, e.practice, e.patient, e.action
			parts[i-1].more = p
		}
		p.part = uint32(i + 1)
	}
	if len(parts) > 0 {
		parts[len(parts)-1].last = true
	}
	return e
}

// practiceConns are the connections of one practice on this gateway.
type practiceConns struct {
	// practice is the practice's id.
	practice string
	staff    map[*conn]struct{}
	// byPrincipal holds every connection by its principal's subject token
	// (natsx.Token("patients/p"), natsx.Token("users/u")).
	byPrincipal map[string]map[*conn]struct{}
	// decoded and dispatched count this practice's events, rendered the
	// message views encoded for them, fetched the conversation views
	// fetched for them, composed those built from the event (tests).
	decoded, dispatched, rendered, fetched, composed atomic.Uint64
}

// hubStats are the hub's counters for one practice.
type hubStats struct{ decoded, dispatched, rendered, fetched, composed uint64 }

type hub struct {
	s   *Server
	log *zap.Logger

	mu sync.RWMutex
	// practices indexes connections by practice subject token.
	practices map[string]*practiceConns
	// pos is the last sequence of each stream the hub has dispatched; it is
	// written under mu's read lock after the dispatch, so a connection that
	// registers (write lock) gets every later event and none before.
	pos [2]atomic.Uint64

	// startMu guards starting; running is set once the consumers run.
	startMu sync.Mutex
	running atomic.Bool
	cancel  context.CancelFunc
	done    chan struct{}

	decodedTotal atomic.Uint64
	queued       atomic.Int64 // items waiting in connection queues

	// wakes are each stream's connections with events queued but not yet
	// woken (wakeBatch); lazy those whose events are only held
	// (lazyFor).
	wakes, lazy [2]*wakeBatch

	// keepAlive schedules every connection's keep-alive.
	keepAlive *keepAliveWheel
	// stages times a message's trip to its recipient's stream.
	stages eventStages
}

func newHub(s *Server) *hub {
	h := &hub{s: s, log: s.log.Named("hub"), practices: map[string]*practiceConns{},
		keepAlive: newKeepAliveWheel(s.cfg.KeepAlive), stages: newEventStages()}
	for i := range h.wakes {
		h.wakes[i] = newWakeBatch(i, wakeWait)
		h.lazy[i] = newWakeBatch(len(h.wakes)+i, lazyWait)
		h.lazy[i].max = 0 // a stream's queue bounds what it holds (dispatch)
	}
	s.metrics.reg.MustRegister(h.stages.hist)
	return h
}

// ready reports whether live events can be served: the consumers run and
// NATS is connected. It starts the consumers on first use (and after a
// failed start).
func (h *hub) ready(ctx context.Context) error {
	if nc := h.s.deps.JS.Conn(); nc != nil && nc.Status() != nats.CONNECTED {
		return errors.New("nats is not connected")
	}
	if h.running.Load() {
		return nil
	}
	h.startMu.Lock()
	defer h.startMu.Unlock()
	if h.running.Load() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, upstreamTimeout)
	defer cancel()
	var heads [2]uint64
	for i, name := range streamNames() {
		str, err := h.s.deps.JS.Stream(ctx, name)
		if err != nil {
			return err
		}
		info, err := str.Info(ctx)
		if err != nil {
			return err
		}
		heads[i] = info.State.LastSeq
	}
	for i := range heads {
		if h.pos[i].Load() < heads[i] {
			h.pos[i].Store(heads[i])
		}
	}
	runCtx, runCancel := context.WithCancel(context.Background())
	h.cancel, h.done = runCancel, make(chan struct{})
	var wg sync.WaitGroup
	for i := range heads {
		wg.Add(1)
		go func() { defer wg.Done(); h.consume(runCtx, i) }()
	}
	go func() { wg.Wait(); close(h.done) }()
	h.running.Store(true)
	return nil
}

// consume runs the stream's consumer from the hub's position until ctx
// ends, re-creating it from its last position whenever it stops.
func (h *hub) consume(ctx context.Context, stream int) {
	name := streamNames()[stream]
	backoff := 250 * time.Millisecond
	for ctx.Err() == nil {
		t0 := time.Now()
		err := h.consumeOnce(ctx, stream)
		if ctx.Err() != nil {
			return
		}
		if time.Since(t0) > 10*time.Second {
			backoff = 250 * time.Millisecond // it ran: not the same outage
		}
		h.log.Warn("hub consumer stopped; re-creating", zap.String(logkeys.Stream, name), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// hubHeartbeat is the hub consumers' idle heartbeat: a consumer that
// misses two is re-created (the server holding it, it has one replica,
// died).
const hubHeartbeat = time.Second

// hubCreateTimeout bounds creating a hub consumer. While a NATS cluster
// elects its metadata leader, its servers drop JetStream API requests
// without an answer; a short wait and another try (consume) gets the
// consumer soon after the election. (The library's ordered consumer waits
// 10 s for each attempt to re-create itself, then backs off: live events
// stopped for 10-13 s whenever a NATS server died.)
const hubCreateTimeout = 2 * time.Second

// consumeOnce runs one ephemeral consumer of the stream from the hub's
// position, as the library's ordered consumer would (no acks, one replica,
// in memory), until ctx ends or the consumer fails: a missed heartbeat, the
// consumer gone, or a gap in its delivery sequence. consume then
// re-creates it from the hub's position.
func (h *hub) consumeOnce(ctx context.Context, stream int) error {
	name := streamNames()[stream]
	cfg := jetstream.ConsumerConfig{
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       h.pos[stream].Load() + 1,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: time.Minute,
		Replicas:          1,
		MemoryStorage:     true,
	}
	if f := hubFilter(stream); len(f) == 1 {
		cfg.FilterSubject = f[0]
	} else {
		cfg.FilterSubjects = f
	}
	cctx, cancel := context.WithTimeout(ctx, hubCreateTimeout)
	cons, err := h.s.deps.JS.CreateOrUpdateConsumer(cctx, name, cfg)
	cancel()
	if err != nil {
		return err
	}
	defer func() {
		go func() { // best effort: InactiveThreshold removes it otherwise
			dctx, cancel := context.WithTimeout(context.Background(), hubCreateTimeout)
			defer cancel()
			_ = h.s.deps.JS.DeleteConsumer(dctx, name, cons.CachedInfo().Name)
		}()
	}()
	failed := make(chan error, 1)
	fail := func(err error) {
		select {
		case failed <- err:
		default:
		}
	}
	wakes, lazy := h.wakes[stream], h.lazy[stream]
	defer func() { // nothing queued stays unwoken when the consumer goes
		wakes.flush()
		lazy.flush()
	}()
	next := uint64(1) // the consumer sequence expected next
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, ok := parseAck(m.Reply()) // m.Metadata() without its allocation
		if !ok {
			return
		}
		if md.consumer != next {
			wakes.flush()
			lazy.flush()
			fail(fmt.Errorf("consumer sequence %d, expected %d", md.consumer, next))
			return
		}
		next++
		h.dispatch(stream, m, md.stream, md.timestamp)
		if md.pending == 0 {
			// The end of what the stream held when this one was delivered:
			// wake the connections the burst queued on, once each.
			wakes.flush()
		}
	},
		jetstream.PullMaxMessages(pullBatch),
		jetstream.PullHeartbeat(hubHeartbeat),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			h.log.Debug("hub consumer", zap.String(logkeys.Stream, name), zap.Error(err))
			if errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
				errors.Is(err, jetstream.ErrConsumerNotFound) {
				fail(err)
			}
		}))
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		err = nil
	case err = <-failed:
	case <-cc.Closed():
		return errors.New("consumer closed")
	}
	cc.Stop()
	<-cc.Closed()
	return err
}

// stop ends the consumers and waits for them.
func (h *hub) stop() {
	h.startMu.Lock()
	defer h.startMu.Unlock()
	if h.cancel != nil {
		h.cancel()
		<-h.done
		h.cancel = nil
	}
	h.running.Store(false)
}

// dispatch handles one message of a hub consumer (NATS callback).
// stored is when JetStream stored it.
func (h *hub) dispatch(stream int, m jetstream.Msg, seq uint64, stored time.Time) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if seq <= h.pos[stream].Load() {
		return // re-delivered after a consumer reset
	}
	defer h.pos[stream].Store(seq)
	subject := m.Subject()
	t0, t1, tokens := natsx.TenantTokens(subject)
	var pc *practiceConns
	practice := ""
	if tokens > 0 {
		// The tenant form: skip events nobody here may see before decoding.
		pc = h.practices[t0]
		if pc == nil {
			return
		}
		practice = pc.practice
		// The second token is the thread's patient, or for the events
		// only their user sees (a reader's conversation.read, a pin or
		// mute) that user: those are skipped when the user has no stream
		// here, however many staff streams the practice has (every
		// receipt of a patient reading on a phone, in a practice whose
		// staff have the Chat page open).
		if tokens > 1 && len(pc.byPrincipal[t1]) == 0 && (len(pc.staff) == 0 || userAddressed(stream, subject)) {
			return
		}
	}
	e := decodeEvent(h.log, stream, seq, subject, m.Data(), practice)
	h.decodedTotal.Add(1)
	h.s.metrics.hubDecoded.Inc()
	if e == nil {
		return
	}
	if pc == nil {
		// The pre-tenant form (published before the upgrade): the practice
		// is only known now.
		pc = h.practices[natsx.Token(e.practice)]
		if pc == nil {
			return
		}
	}
	pc.decoded.Add(1)
	for x := e; x != nil; x = x.more {
		x.pc = pc
	}
	if e.kind == itemMessageCreated && !e.wroteAt.IsZero() {
		e.dispatched = time.Now()
		h.stages.observe(stageStored, stored.Sub(e.wroteAt))
		h.stages.observe(stageConsumed, e.dispatched.Sub(stored))
	}
	if hdr := m.Headers(); hdr != nil && telemetry.Enabled() {
		// (Enabled first: reading the trace header canonicalizes its key,
		// a string allocated per event for nothing when tracing is off.)
		end := h.traceFanout(hdr, subject, e)
		defer end()
		for x := e.more; x != nil; x = x.more {
			x.span = e.span
		}
	}
	wakes, lazy := h.wakes[stream], h.lazy[stream]
	deliver := func(e *event, c *conn) {
		if !e.visibleTo(c.id) {
			return
		}
		queued, ok := c.push(e)
		if !ok {
			return
		}
		pc.dispatched.Add(1)
		switch {
		case e.kind == itemMessageCreated && isRecipient(c.id, e.message):
			// A new message for its recipient is not held for the rest
			// of the burst (wakeBatch): it wakes the stream at once.
			c.signal()
		case lazyFor(c.id, e) && 2*queued <= c.limit:
			lazy.add(c)
		default:
			wakes.add(c)
		}
	}
	switch e.kind {
	case itemUserState, itemConversationRead:
		for c := range pc.byPrincipal[natsx.Token(e.user)] {
			deliver(e, c)
		}
	default:
		// Each part of the stream message in turn, so a connection's queue
		// holds them in order (the parts share their audience).
		for x := e; x != nil; x = x.more {
			for c := range pc.staff {
				deliver(x, c)
			}
			for c := range pc.byPrincipal[natsx.Token(e.patient)] {
				if c.id.IsPatient() {
					deliver(x, c)
				}
			}
		}
	}
}

// userAddressed reports whether subject is of a kind only its user sees
// (visibleTo: conversation.read, userstate.changed), whose tenant form's
// second token is that user (conversation's events).
func userAddressed(stream int, subject string) bool {
	if stream != streamC {
		return false
	}
	base := natsx.Base(subject)
	return base == natsx.SubjectConversationRead || base == natsx.SubjectConversationUser
}

// traceFanout starts the fan-out span of a traced event, child of the span
// that published it, and keeps its context on e for the connections' writes.
func (h *hub) traceFanout(hdr nats.Header, subject string, e *event) (end func()) {
	ctx, traced := telemetry.FromHeader(context.Background(), hdr)
	if !traced || !telemetry.Enabled() {
		return func() {}
	}
	_, span := telemetry.Tracer().Start(ctx, "fanout "+natsx.Base(subject), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", subject)))
	e.span = span.SpanContext()
	return func() { span.End() }
}

// register adds c to the fan-out and returns the position from which it
// receives every event: everything after pos.
func (h *hub) register(c *conn) (pos cursor) {
	pt, ut := natsx.Token(c.id.Practice), natsx.Token(c.id.Principal())
	h.mu.Lock()
	defer h.mu.Unlock()
	pc := h.practices[pt]
	if pc == nil {
		pc = &practiceConns{practice: c.id.Practice, staff: map[*conn]struct{}{}, byPrincipal: map[string]map[*conn]struct{}{}}
		h.practices[pt] = pc
	}
	if !c.id.IsPatient() {
		pc.staff[c] = struct{}{}
	}
	byp := pc.byPrincipal[ut]
	if byp == nil {
		byp = map[*conn]struct{}{}
		pc.byPrincipal[ut] = byp
	}
	byp[c] = struct{}{}
	h.keepAlive.add(c)
	return cursor{d: h.pos[streamD].Load(), c: h.pos[streamC].Load()}
}

// unregister removes c; the practice's entry goes with its last connection.
func (h *hub) unregister(c *conn) {
	pt, ut := natsx.Token(c.id.Practice), natsx.Token(c.id.Principal())
	h.keepAlive.remove(c)
	h.mu.Lock()
	defer h.mu.Unlock()
	pc := h.practices[pt]
	if pc == nil {
		return
	}
	delete(pc.staff, c)
	if byp := pc.byPrincipal[ut]; byp != nil {
		delete(byp, c)
		if len(byp) == 0 {
			delete(pc.byPrincipal, ut)
		}
	}
	if len(pc.byPrincipal) == 0 {
		delete(h.practices, pt)
	}
	h.queued.Add(-int64(c.drop()))
}

// position is the hub's current position.
func (h *hub) position() cursor {
	return cursor{d: h.pos[streamD].Load(), c: h.pos[streamC].Load()}
}

// stats returns the counters of a practice (by id) while it has
// connections here.
func (h *hub) stats(practice string) hubStats {
	h.mu.RLock()
	defer h.mu.RUnlock()
	pc := h.practices[natsx.Token(practice)]
	if pc == nil {
		return hubStats{}
	}
	return hubStats{decoded: pc.decoded.Load(), dispatched: pc.dispatched.Load(), rendered: pc.rendered.Load(), fetched: pc.fetched.Load(),
		composed: pc.composed.Load()}
}

// The stages of a message's trip to its recipient's /v1/events stream, as
// clinicchat_gateway_event_stage_seconds{stage} observes them (message.created
// only; the queued and written stages on the recipients' streams only):
//
//	stored    the sender's transaction wrote the event (EventMeta.time) →
//	          JetStream stored it: the rest of the transaction, the commit,
//	          the outbox relay's wake-up, read and publish
//	consumed  stored → the fan-out took it off its consumer
//	queued    the fan-out took it → the recipient's stream took it off its
//	          queue (the stream's goroutine woke up; the render is next)
//	written   taken off the queue → rendered and written to the socket
//
// stored and consumed compare clocks of the writing service, the NATS server
// and the gateway: across hosts they include the hosts' clock offsets (in
// the all-in-one there is one clock).
const (
	stageStored = iota
	stageConsumed
	stageQueued
	stageWritten
	stageCount
)

var stageNames = [stageCount]string{"stored", "consumed", "queued", "written"}

// eventStages is the stage histogram, its children looked up once.
type eventStages struct {
	hist *prometheus.HistogramVec
	by   [stageCount]prometheus.Observer
}

func newEventStages() eventStages {
	st := eventStages{hist: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "clinicchat_gateway_event_stage_seconds",
		Help: "Time each stage of a message.created's trip to its recipient's event stream took " +
			"(stored: written by the sender's transaction → stored by JetStream; consumed: → taken by the fan-out; " +
			"queued: → taken by the recipient's stream; written: → on the recipient's socket).",
		Buckets: []float64{.0001, .00025, .0005, .001, .002, .003, .005, .0075, .01, .015, .02, .03, .05, .1, .25, 1},
	}, []string{"stage"})}
	for i, n := range stageNames {
		st.by[i] = st.hist.WithLabelValues(n)
	}
	return st
}

func (st *eventStages) observe(stage int, d time.Duration) { st.by[stage].Observe(d.Seconds()) }

// Waking a stream costs a goroutine wake-up and, once it has written what
// is queued, a write and another wait; a burst of events for the same
// stream (the practice's staff see every thread's) should cost one. The
// hub queues each event at once but wakes the connections it queued on at
// the end of the burst: when the consumer delivers an event after which
// the stream held nothing more for it (JetStream's pending count, taken
// when it was delivered, is 0), after wakeMax events, or after wakeWait
// at the latest. Nothing waits for a wake-up: an event queued is written
// by whichever wake-up comes first (a keep-alive's too), in queue order.
// A new message wakes its recipient's stream at once (dispatch): under a
// steady flow of sends a burst's end rarely comes before the timer, whose
// wake-up then waits its turn on the busy cores (the recipient's stream
// took 1–3 ms p90 from the fan-out to its goroutine that way, 0.1 ms when
// woken at once; BENCHMARKS.md, gateway12); what was held for it goes out
// in the same write.
//
// Some events tell a viewer nothing they are waiting for: a thread's
// conversation.updated (its preview, counts and order in the list; the
// message itself came as message.created), a receipt of a message the
// viewer did not send (the receiving side's own DELIVERED and READ echoed
// back, and every other staff member's copy of a colleague's receipt: the
// practice's staff see every thread's), a user's pin or mute echoed to
// their other tabs, a conversation.read (never written). Those are held
// (lazyFor) up to lazyWait, not only to the end of their burst: a stream
// woken for anything else in the meantime (its next new message, above
// all) writes them in the same write. Under a steady flow a patient's stream then gets one write per message instead
// of two (message.created, then its thread's conversation.updated a
// commit later), and its reader one wake-up (BENCHMARKS.md, edge14); a
// receipt wakes only its message's sender's streams, not every staff
// stream of the practice, whose other receipts ride along with their
// own (BENCHMARKS.md, gw16). A stream whose queue is half full is not
// held.
const (
	// wakeWait bounds how long an event waits for the rest of its burst.
	wakeWait = 2 * time.Millisecond
	// wakeMax is the most events a burst holds back.
	wakeMax = 64
	// lazyWait bounds how long an event lazyFor its viewer is held.
	lazyWait = 20 * time.Millisecond
)

// lazyFor reports whether e can wait for id's stream to be woken for
// something else, up to lazyWait.
func lazyFor(id auth.Identity, e *event) bool {
	switch e.kind {
	case itemConversation, itemUserState, itemConversationRead:
		return true
	case itemMessageUpdated:
		// Prompt only for the message's sender, who waits for its ticks.
		return !id.IsPrincipal(e.message.GetSender())
	}
	return false
}

// wakeBatch is one stream's connections with events queued but not yet
// woken. The stream's consumer callback adds and flushes; its timer and the
// consumer's end flush too.
type wakeBatch struct {
	// slot is the batch's index in conn.wakeDue.
	slot   int
	mu     sync.Mutex
	conns  []*conn
	events int
	// max is how many events wake the batch at once (0: no bound).
	max   int
	timer *time.Timer
	wait  time.Duration
	// armed: the timer runs for the current batch.
	armed bool
	// wakes counts flushes that woke connections, timed those the timer
	// made (tests).
	wakes, timed atomic.Uint64
}

func newWakeBatch(slot int, wait time.Duration) *wakeBatch {
	b := &wakeBatch{slot: slot, wait: wait, max: wakeMax}
	b.timer = time.AfterFunc(time.Hour, func() {
		if b.flush() {
			b.timed.Add(1)
		}
	})
	b.timer.Stop()
	return b
}

// add records that c has an event queued to wake it for.
func (b *wakeBatch) add(c *conn) {
	b.mu.Lock()
	if !c.wakeDue[b.slot] {
		c.wakeDue[b.slot] = true
		b.conns = append(b.conns, c)
	}
	b.events++
	full := b.max > 0 && b.events >= b.max
	if !b.armed && !full {
		b.armed = true
		b.timer.Reset(b.wait)
	}
	b.mu.Unlock()
	if full {
		b.flush()
	}
}

// flush wakes every connection added since the last flush that still has
// something queued (a stream woken for something else meanwhile wrote what
// it held: no wake-up for nothing); false when none was added.
func (b *wakeBatch) flush() bool {
	b.mu.Lock()
	conns := b.conns
	if len(conns) == 0 {
		b.mu.Unlock()
		return false
	}
	b.conns, b.events = nil, 0
	if b.armed {
		b.armed = false
		b.timer.Stop()
	}
	for _, c := range conns {
		c.wakeDue[b.slot] = false
	}
	b.mu.Unlock()
	for _, c := range conns {
		if !c.idle() {
			c.signal()
		}
	}
	b.wakes.Add(1)
	return true
}
