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
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

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
