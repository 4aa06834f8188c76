package grpcx

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/clinicchat/clinicchat/services/platform/auth"
)

// Intercept is a server option adding interceptors to a Server's chains,
// after its own (metrics, authentication): unlike grpc.ChainUnaryInterceptor
// they also run on its in-process calls (Server.InProcess). Either may be
// nil.
func Intercept(unary grpc.UnaryServerInterceptor, stream grpc.StreamServerInterceptor) grpc.ServerOption {
	return interceptOption{unary: unary, stream: stream}
}

// interceptOption changes nothing in grpc's own configuration (grpc
// documents EmptyServerOption for embedding in custom options): NewServer
// picks the interceptors out and chains them on both paths.
type interceptOption struct {
	grpc.EmptyServerOption
	unary  grpc.UnaryServerInterceptor
	stream grpc.StreamServerInterceptor
}

// InProcess is a connection to s's services from the same process that
// skips the transport (no HTTP/2 framing, HPACK, flow control or protobuf
// encoding): each call runs the handler on a goroutine of its own through
// every server interceptor and the tracing stats handler, exactly as a call
// from the network does — authentication from the bearer token of the
// outgoing metadata (which becomes the handler's incoming metadata), rate
// limits (Intercept), Prometheus metrics, error mapping, panic recovery —
// and the caller's side forwards the bearer token of the caller's identity
// when its outgoing metadata has none (as auth.ForwardUnary does) and is
// traced as Dial's connections are. The handler's context carries the
// caller's deadline and cancellation but none of its values. An error
// reaches the caller as a status, code and details, as over the network.
// Messages are deep-copied each way (proto.Clone/Merge), so caller and
// handler never share one (a handler changing its request, or the answer
// it returned, changes nothing the caller sees, and the reverse). Unary and streaming calls both work; unlike a
// network connection there is no retry on UNAVAILABLE and no message size
// limit.
func (s *Server) InProcess() grpc.ClientConnInterface { return s.inproc }

// StopInProcess refuses new in-process calls (UNAVAILABLE, as a stopped
// server) and waits up to timeout for those in flight; it reports whether
// they all ended. Call it once every in-process caller has stopped, before
// closing what the handlers use.
func (s *Server) StopInProcess(timeout time.Duration) bool { return s.inproc.stop(timeout) }

// RegisterService registers a service on the gRPC server and on its
// in-process channel (services register through s, a grpc.ServiceRegistrar).
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.Server.RegisterService(desc, impl)
	s.inproc.register(desc, impl)
}

// inProcess is a Server's in-process channel.
type inProcess struct {
	methods     map[string]*inprocMethod // by full method name, "/pkg.Service/Method"
	unary       grpc.UnaryServerInterceptor
	stream      grpc.StreamServerInterceptor
	serverStats stats.Handler // nil when tracing is off
	clientStats stats.Handler
	workers     workers

	mu     sync.Mutex
	calls  int
	closed bool
	idle   chan struct{} // closed once closed with no call left
}

type inprocMethod struct {
	impl   any
	unary  *grpc.MethodDesc
	stream *grpc.StreamDesc
}

var _ grpc.ClientConnInterface = (*inProcess)(nil)

func newInProcess(unary []grpc.UnaryServerInterceptor, stream []grpc.StreamServerInterceptor, serverStats, clientStats stats.Handler) *inProcess {
	return &inProcess{
		methods: map[string]*inprocMethod{},
		unary:   chainUnary(unary), stream: chainStream(stream),
		serverStats: serverStats, clientStats: clientStats,
		workers: workers{calls: make(chan job), max: workerCalls},
		idle:    make(chan struct{}),
	}
}

// register is called before any call (as grpc.Server's RegisterService).
func (p *inProcess) register(desc *grpc.ServiceDesc, impl any) {
	for i := range desc.Methods {
		p.methods["/"+desc.ServiceName+"/"+desc.Methods[i].MethodName] = &inprocMethod{impl: impl, unary: &desc.Methods[i]}
	}
	for i := range desc.Streams {
		p.methods["/"+desc.ServiceName+"/"+desc.Streams[i].StreamName] = &inprocMethod{impl: impl, stream: &desc.Streams[i]}
	}
}

// enter counts a call in; false once stopped.
func (p *inProcess) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.calls++
	return true
}

func (p *inProcess) leave() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls--
	if p.closed && p.calls == 0 {
		close(p.idle)
	}
}

func (p *inProcess) stop(timeout time.Duration) bool {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		if p.calls == 0 {
			close(p.idle)
		}
	}
	p.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.idle:
		return true
	case <-t.C:
		return false
	}
}

// errStopped is what a call gets once the channel is stopped, as a network
// client gets from a server that stopped.
var errStopped = status.Error(codes.Unavailable, "the server is stopping")

// inprocAddr is the peer address of an in-process call.
type inprocAddr struct{}

func (inprocAddr) Network() string { return "inprocess" }
func (inprocAddr) String() string  { return "inprocess" }

var inprocPeer = &peer.Peer{Addr: inprocAddr{}, LocalAddr: inprocAddr{}}

// detached is the root of a call's handler context: a cancel context
// derived from the caller's (so it has the caller's deadline and
// cancellation, and registers with the caller's cancel context directly,
// without AfterFunc's objects) with none of the caller's values (its
// identity, outgoing metadata, span): the handler learns them from the
// metadata, as over the network. The one lookup it passes on is the cancel
// context's own (the context package's, which answers with that context
// itself), so that contexts a handler derives from it register with it and
// start no goroutine each.
type detached struct{ context.Context }

func (d *detached) Value(k any) any {
	if v := d.Context.Value(k); v == any(d.Context) {
		return v
	}
	return nil
}

// serverContext is the handler's context of a call whose caller's context
// (after the client interceptors and stats handler) is ctx; cancel ends it
// when the call is over, as a server does. Its root is a cancel context
// (detached), so that the contexts a handler derives from it find a cancel
// context among their parents and start no goroutine each.
//
// The handler's incoming metadata is the caller's outgoing metadata (a
// copy, keys lowercased) with the caller's bearer token added when it has
// none, as auth.ForwardUnary adds it to a network call's: built here at
// once instead of through a second outgoing context and a second copy.
//
// d is where the detached root goes (a field of the call, so that it is not
// an allocation of its own); nil allocates one.
func serverContext(ctx context.Context, d *detached, sts grpc.ServerTransportStream) (_ context.Context, cancel context.CancelFunc) {
	md, _ := metadata.FromOutgoingContext(ctx) // a copy, keys lowercased
	if len(md[auth.MetadataKey]) == 0 {
		if v := auth.Bearer(ctx); v != "" {
			if md == nil {
				md = make(metadata.MD, 1)
			}
			md[auth.MetadataKey] = []string{v}
		}
	}
	if d == nil {
		d = new(detached)
	}
	d.Context, cancel = context.WithCancel(ctx)
	sctx := metadata.NewIncomingContext(d, md)
	sctx = peer.NewContext(sctx, inprocPeer)
	return grpc.NewContextWithServerTransportStream(sctx, sts), cancel
}

// callOptions are a call's options; done honours the header, trailer and
// peer ones (read when the call ends, so that a call allocates nothing for
// them).
type callOptions []grpc.CallOption

func parseCallOptions(opts []grpc.CallOption) callOptions { return opts }

func (c callOptions) done(header, trailer metadata.MD) {
	for _, o := range c {
		switch o := o.(type) {
		case grpc.HeaderCallOption:
			*o.HeaderAddr = header
		case grpc.TrailerCallOption:
			*o.TrailerAddr = trailer
		case grpc.PeerCallOption:
			*o.PeerAddr = *inprocPeer
		}
	}
}

// toClientError is err as a client sees it: a status (a copy: the caller
// never shares the handler's), context errors mapped to their codes.
func toClientError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		if _, ok := status.FromError(err); !ok {
			return status.FromContextError(err).Err()
		}
	}
	return status.Convert(err).Err()
}

// headerStream is the grpc.ServerTransportStream of a call (grpc.SetHeader,
// grpc.SetTrailer from a handler).
type headerStream struct {
	method string
	mu     sync.Mutex
	header metadata.MD
	sent   bool
	// trailer is read once the handler has returned.
	trailer metadata.MD
	// onSend sends the header of a stream (nil for a unary call, whose
	// header goes with its response).
	onSend func(metadata.MD)
}

func (h *headerStream) Method() string { return h.method }

func (h *headerStream) SetHeader(md metadata.MD) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sent {
		return status.Error(codes.Internal, "transport: the header was already sent")
	}
	h.header = metadata.Join(h.header, md)
	return nil
}

func (h *headerStream) SendHeader(md metadata.MD) error {
	if err := h.SetHeader(md); err != nil {
		return err
	}
	h.flushHeader()
	return nil
}

// flushHeader marks the header sent and returns it (sending it on a
// stream); later calls return nil.
func (h *headerStream) flushHeader() metadata.MD {
	h.mu.Lock()
	if h.sent {
		h.mu.Unlock()
		return nil
	}
	h.sent = true
	md := h.header
	h.mu.Unlock()
	if h.onSend != nil {
		h.onSend(md)
	}
	return md
}

func (h *headerStream) SetTrailer(md metadata.MD) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.trailer = metadata.Join(h.trailer, md)
	return nil
}

func (h *headerStream) getTrailer() metadata.MD {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.trailer
}

// workers runs the handlers of unary calls on goroutines that are kept for
// the next call: a handler reaching deep (SQLite's C-to-Go code) grows its
// stack to tens of KiB, and a new goroutine per call grew it again each time
// (runtime.newstack/copystack: 1.5% of the CPU of a flat-out send run). A
// worker waits workerIdle for another call and runs at most workerCalls
// (then a new one starts, with a small stack again, as grpc-go's own stream
// workers do); when every worker is busy, another starts.
type workers struct {
	calls chan job
	max   int // calls a worker runs (workerCalls)
}

// job is a call a worker runs: a *unaryCall (an interface holding a pointer
// costs no allocation, where a closure per call did).
type job interface{ run() }

// jobFunc is a func as a job.
type jobFunc func()

func (f jobFunc) run() { f() }

const (
	workerIdle  = 2 * time.Second
	workerCalls = 1 << 16
)

func (w *workers) run(f job) {
	select {
	case w.calls <- f: // a worker was waiting
	default:
		go w.work(f)
	}
}

func (w *workers) work(f job) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for n := 1; ; n++ {
		f.run()
		if n == w.max {
			return // the next call starts a worker with a small stack
		}
		idle.Reset(workerIdle)
		select {
		case f = <-w.calls:
		case <-idle.C:
			return
		}
	}
}

// Invoke runs a unary call: the client interceptors, then the handler on a
// goroutine of its own (a worker), so that the caller returns at its
// deadline or cancellation whatever the handler does (as over the network).
func (p *inProcess) Invoke(ctx context.Context, method string, req, reply any, opts ...grpc.CallOption) error {
	return p.invoke(ctx, method, req, reply, opts...)
}

// unaryCall is one unary call: what its worker needs and what it answers,
// in one allocation (the header stream, the wait for the request's copy and
// for the end are fields, not objects of their own).
type unaryCall struct {
	p      *inProcess
	method string
	m      *inprocMethod
	in     proto.Message // the caller's request, read until decoded
	sctx   context.Context
	cancel context.CancelFunc
	det    detached // the root of sctx
	hs     headerStream

	decodeOnce sync.Once
	decoded    sync.WaitGroup // done once the handler has its copy of in
	// The end: done is sent to when the caller's context can end (it
	// selects on both), else ended is marked done.
	done  chan struct{}
	ended sync.WaitGroup

	resp            any
	err             error
	header, trailer metadata.MD
}

func (c *unaryCall) markDecoded() { c.decodeOnce.Do(c.decoded.Done) }

// decode copies the request into the handler's message.
func (c *unaryCall) decode(m any) error {
	defer c.markDecoded()
	dst, ok := m.(proto.Message)
	if !ok || dst.ProtoReflect().Descriptor() != c.in.ProtoReflect().Descriptor() {
		return status.Errorf(codes.Internal, "in-process call: cannot decode %T into %T", c.in, m)
	}
	proto.Merge(dst, c.in)
	return nil
}

// run is the worker's part: the server side, then the end.
func (c *unaryCall) run() {
	func() {
		defer c.markDecoded()
		defer c.cancel()
		c.resp, c.err = c.p.serveUnary(c.sctx, c.method, c.m, c.decode)
		c.header, c.trailer = c.hs.flushHeader(), c.hs.getTrailer()
	}()
	if c.done != nil {
		c.done <- struct{}{}
	} else {
		c.ended.Done()
	}
}

func (p *inProcess) invoke(ctx context.Context, method string, req, reply any, opts ...grpc.CallOption) (err error) {
	m := p.methods[method]
	if m == nil || m.unary == nil {
		return status.Errorf(codes.Unimplemented, "unknown method %s", method)
	}
	in, ok := req.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "in-process call: %T is not a protobuf message", req)
	}
	out, ok := reply.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "in-process call: %T is not a protobuf message", reply)
	}
	if err := contextEnded(ctx); err != nil {
		return err
	}
	if p.clientStats != nil {
		ctx = p.clientStats.TagRPC(ctx, &stats.RPCTagInfo{FullMethodName: method})
		p.clientStats.HandleRPC(ctx, &stats.Begin{Client: true, BeginTime: time.Now()})
		p.clientStats.HandleRPC(ctx, &stats.OutPayload{Client: true, Payload: req, SentTime: time.Now()})
		defer func() { p.clientStats.HandleRPC(ctx, &stats.End{Client: true, EndTime: time.Now(), Error: err}) }()
	}
	c := &unaryCall{p: p, method: method, m: m, in: in}
	c.hs.method = method
	c.sctx, c.cancel = serverContext(ctx, &c.det, &c.hs)
	c.decoded.Add(1)
	ctxDone := ctx.Done()
	if ctxDone != nil {
		c.done = make(chan struct{}, 1)
	} else {
		c.ended.Add(1)
	}
	p.workers.run(c)
	if ctxDone == nil {
		c.ended.Wait() // the caller's context never ends: nothing to select
	} else {
		select {
		case <-c.done:
		case <-ctxDone:
			c.decoded.Wait() // the caller may reuse req once the handler has its copy
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	parseCallOptions(opts).done(c.header, c.trailer)
	if c.err != nil {
		return toClientError(c.err)
	}
	if p.clientStats != nil {
		p.clientStats.HandleRPC(ctx, &stats.InPayload{Client: true, Payload: c.resp, RecvTime: time.Now()})
	}
	resp, ok := c.resp.(proto.Message)
	if !ok || resp.ProtoReflect().Descriptor() != out.ProtoReflect().Descriptor() {
		return status.Errorf(codes.Internal, "in-process call: cannot copy %T into %T", c.resp, reply)
	}
	proto.Reset(out)
	proto.Merge(out, resp)
	return nil
}

// serveUnary is the server side of a unary call: the stats handler, the
// drain count, then the interceptors and the handler.
func (p *inProcess) serveUnary(ctx context.Context, method string, m *inprocMethod, dec func(any) error) (resp any, err error) {
	if p.serverStats != nil {
		ctx = p.serverStats.TagRPC(ctx, &stats.RPCTagInfo{FullMethodName: method})
		p.serverStats.HandleRPC(ctx, &stats.Begin{BeginTime: time.Now()})
		defer func() {
			if err == nil {
				p.serverStats.HandleRPC(ctx, &stats.OutPayload{Payload: resp, SentTime: time.Now()})
			}
			p.serverStats.HandleRPC(ctx, &stats.End{EndTime: time.Now(), Error: err})
		}()
	}
	if !p.enter() {
		return nil, errStopped
	}
	defer p.leave()
	return m.unary.Handler(m.impl, ctx, dec, p.unary)
}

// contextEnded is the status of a call whose context has already ended
// (CANCELED or DEADLINE_EXCEEDED), nil otherwise: as over the network, such
// a call fails at once and never reaches the handler. (Started anyway, the
// handler could answer before the caller saw its context end.)
func contextEnded(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	default:
		return nil
	}
}

// NewStream starts a streaming call: the client interceptors, then the
// handler on its own goroutine, messages passed (copied) over channels.
func (p *inProcess) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return p.newStream(ctx, desc, method, opts...)
}

// frame is one thing a handler sends its caller: a header, a message, or
// the end (trailer and status).
type frame struct {
	header  metadata.MD
	msg     proto.Message
	end     bool
	trailer metadata.MD
	err     error
}

func (p *inProcess) newStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	m := p.methods[method]
	if m == nil || m.stream == nil {
		return nil, status.Errorf(codes.Unimplemented, "unknown method %s", method)
	}
	if err := contextEnded(ctx); err != nil {
		return nil, err
	}
	if p.clientStats != nil {
		ctx = p.clientStats.TagRPC(ctx, &stats.RPCTagInfo{FullMethodName: method})
		p.clientStats.HandleRPC(ctx, &stats.Begin{Client: true, BeginTime: time.Now(),
			IsClientStream: desc.ClientStreams, IsServerStream: desc.ServerStreams})
	}
	cs := &clientStream{ctx: ctx, p: p, copts: parseCallOptions(opts), serverStreams: desc.ServerStreams,
		requests: make(chan proto.Message, 1), responses: make(chan frame, 1), serverDone: make(chan struct{})}
	ss := &serverStream{p: p, requests: cs.requests, responses: cs.responses, clientDone: ctx.Done()}
	ss.hs = &headerStream{method: method, onSend: ss.sendHeader}
	var cancel context.CancelFunc
	ss.ctx, cancel = serverContext(ctx, nil, ss.hs)
	go func() {
		defer cancel()
		err := p.serveStream(ss, method, m)
		// The handler is done: a caller still sending is told so (it may
		// be blocked on a full request buffer) and reads the status next.
		close(cs.serverDone)
		// The end, unless the caller has gone (its context is done).
		ss.hs.flushHeader()
		select {
		case cs.responses <- frame{end: true, trailer: ss.hs.getTrailer(), err: err}:
		case <-ss.clientDone:
		}
	}()
	return cs, nil
}

func (p *inProcess) serveStream(ss *serverStream, method string, m *inprocMethod) (err error) {
	if p.serverStats != nil {
		ss.ctx = p.serverStats.TagRPC(ss.ctx, &stats.RPCTagInfo{FullMethodName: method})
		ss.stats = p.serverStats
		p.serverStats.HandleRPC(ss.ctx, &stats.Begin{BeginTime: time.Now(),
			IsClientStream: m.stream.ClientStreams, IsServerStream: m.stream.ServerStreams})
		defer func() { p.serverStats.HandleRPC(ss.ctx, &stats.End{EndTime: time.Now(), Error: err}) }()
	}
	if !p.enter() {
		return errStopped
	}
	defer p.leave()
	info := &grpc.StreamServerInfo{FullMethod: method, IsClientStream: m.stream.ClientStreams, IsServerStream: m.stream.ServerStreams}
	return p.stream(m.impl, ss, info, m.stream.Handler)
}

// serverStream is the handler's side of a streaming call.
type serverStream struct {
	p          *inProcess
	ctx        context.Context
	hs         *headerStream
	stats      stats.Handler
	requests   <-chan proto.Message
	responses  chan<- frame
	clientDone <-chan struct{}
}

func (s *serverStream) Context() context.Context        { return s.ctx }
func (s *serverStream) SetHeader(md metadata.MD) error  { return s.hs.SetHeader(md) }
func (s *serverStream) SendHeader(md metadata.MD) error { return s.hs.SendHeader(md) }
func (s *serverStream) SetTrailer(md metadata.MD)       { _ = s.hs.SetTrailer(md) }

func (s *serverStream) sendHeader(md metadata.MD) {
	select {
	case s.responses <- frame{header: md}:
	case <-s.clientDone:
	}
}

func (s *serverStream) SendMsg(m any) error {
	msg, ok := m.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "in-process call: %T is not a protobuf message", m)
	}
	s.hs.flushHeader()
	if err := s.ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	if s.stats != nil {
		s.stats.HandleRPC(s.ctx, &stats.OutPayload{Payload: m, SentTime: time.Now()})
	}
	select {
	case s.responses <- frame{msg: proto.Clone(msg)}:
		return nil
	case <-s.clientDone:
		return status.FromContextError(s.ctx.Err()).Err()
	}
}

func (s *serverStream) RecvMsg(m any) error {
	select {
	case msg, ok := <-s.requests:
		if !ok {
			return io.EOF
		}
		dst, ok := m.(proto.Message)
		if !ok || dst.ProtoReflect().Descriptor() != msg.ProtoReflect().Descriptor() {
			return status.Errorf(codes.Internal, "in-process call: cannot copy %T into %T", msg, m)
		}
		proto.Merge(dst, msg)
		if s.stats != nil {
			s.stats.HandleRPC(s.ctx, &stats.InPayload{Payload: m, RecvTime: time.Now()})
		}
		return nil
	case <-s.clientDone:
		return status.FromContextError(s.ctx.Err()).Err()
	}
}

// clientStream is the caller's side of a streaming call.
type clientStream struct {
	ctx           context.Context
	p             *inProcess
	copts         callOptions
	serverStreams bool
	requests      chan proto.Message
	responses     chan frame
	serverDone    chan struct{} // closed when the handler has returned

	sendMu     sync.Mutex
	sendClosed bool

	recvMu  sync.Mutex
	header  metadata.MD
	gotHdr  bool
	pending *proto.Message // a message read while waiting for the header
	ended   bool
	endErr  error // io.EOF or the call's status
	trailer metadata.MD
}

func (c *clientStream) Context() context.Context { return c.ctx }

func (c *clientStream) SendMsg(m any) error {
	msg, ok := m.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "in-process call: %T is not a protobuf message", m)
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.sendClosed {
		return status.Error(codes.Internal, "SendMsg called after CloseSend")
	}
	if c.p.clientStats != nil {
		c.p.clientStats.HandleRPC(c.ctx, &stats.OutPayload{Client: true, Payload: m, SentTime: time.Now()})
	}
	select {
	case c.requests <- proto.Clone(msg):
		return nil
	case <-c.serverDone:
		return io.EOF // the status is RecvMsg's, as over the network
	case <-c.ctx.Done():
		return status.FromContextError(c.ctx.Err()).Err()
	}
}

func (c *clientStream) CloseSend() error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if !c.sendClosed {
		c.sendClosed = true
		close(c.requests)
	}
	return nil
}

// next reads the next frame (recvMu held), recording a header or the end;
// it returns a message, or nil at the end.
func (c *clientStream) next() proto.Message {
	for !c.ended {
		var f frame
		select {
		case f = <-c.responses:
		case <-c.ctx.Done():
			c.finish(nil, status.FromContextError(c.ctx.Err()).Err())
			return nil
		}
		switch {
		case f.end:
			c.gotHdr = true
			c.finish(f.trailer, toClientError(f.err))
		case f.msg != nil:
			c.gotHdr = true
			return f.msg
		default:
			c.header, c.gotHdr = f.header, true
		}
	}
	return nil
}

func (c *clientStream) finish(trailer metadata.MD, err error) {
	c.ended, c.trailer = true, trailer
	if err == nil {
		err = io.EOF
	}
	c.endErr = err
	c.copts.done(c.header, trailer)
	if c.p.clientStats != nil {
		var end error
		if err != io.EOF {
			end = err
		}
		c.p.clientStats.HandleRPC(c.ctx, &stats.End{Client: true, EndTime: time.Now(), Error: end})
	}
}

func (c *clientStream) Header() (metadata.MD, error) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	if !c.gotHdr && c.pending == nil {
		if msg := c.next(); msg != nil {
			c.pending = &msg
		}
	}
	if c.ended && c.endErr != io.EOF && c.header == nil {
		return nil, c.endErr
	}
	return c.header, nil
}

func (c *clientStream) Trailer() metadata.MD {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	return c.trailer
}

func (c *clientStream) RecvMsg(m any) error {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	var msg proto.Message
	if c.pending != nil {
		msg, c.pending = *c.pending, nil
	} else {
		msg = c.next()
	}
	if msg == nil {
		return c.endErr
	}
	dst, ok := m.(proto.Message)
	if !ok || dst.ProtoReflect().Descriptor() != msg.ProtoReflect().Descriptor() {
		return status.Errorf(codes.Internal, "in-process call: cannot copy %T into %T", msg, m)
	}
	proto.Reset(dst)
	proto.Merge(dst, msg)
	if c.p.clientStats != nil {
		c.p.clientStats.HandleRPC(c.ctx, &stats.InPayload{Client: true, Payload: m, RecvTime: time.Now()})
	}
	if !c.serverStreams {
		// One response: the call's status follows it (an error after the
		// message is the call's error, as over the network).
		if extra := c.next(); extra != nil {
			c.finish(nil, status.Error(codes.Internal, "in-process call: more than one response to a call that expects one"))
		}
		if c.endErr != io.EOF {
			return c.endErr
		}
	}
	return nil
}

// chainUnary runs ints in order, the first outermost (as
// grpc.ChainUnaryInterceptor does); the first is called directly, so a call
// allocates a handler for each of the others only.
func chainUnary(ints []grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	if len(ints) == 0 {
		return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			return handler(ctx, req)
		}
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return ints[0](ctx, req, info, unaryAt(ints, 1, info, handler))
	}
}

func unaryAt(ints []grpc.UnaryServerInterceptor, i int, info *grpc.UnaryServerInfo, final grpc.UnaryHandler) grpc.UnaryHandler {
	if i == len(ints) {
		return final
	}
	return func(ctx context.Context, req any) (any, error) {
		return ints[i](ctx, req, info, unaryAt(ints, i+1, info, final))
	}
}

// chainStream is chainUnary for streams.
func chainStream(ints []grpc.StreamServerInterceptor) grpc.StreamServerInterceptor {
	if len(ints) == 0 {
		return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			return handler(srv, ss)
		}
	}
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return ints[0](srv, ss, info, streamAt(ints, 1, info, handler))
	}
}

func streamAt(ints []grpc.StreamServerInterceptor, i int, info *grpc.StreamServerInfo, final grpc.StreamHandler) grpc.StreamHandler {
	if i == len(ints) {
		return final
	}
	return func(srv any, ss grpc.ServerStream) error {
		return ints[i](srv, ss, info, streamAt(ints, i+1, info, final))
	}
}
