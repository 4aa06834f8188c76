// Package gateway is clinicchat's HTTP edge: the JSON API of SPEC.md section 3
// (grpc-gateway in front of the conversation, delivery, preferences,
// attachment and audit services), bearer-token verification, dev-mode token
// issuing, streamed attachment uploads and downloads, the Server-Sent Events
// stream fed from NATS JetStream, and /healthz, /readyz and /metrics.
//
// The gateway owns no data. It verifies the caller's JWT before anything else
// and forwards it unchanged as the "authorization" metadata of every upstream
// call; each service verifies and authorizes the caller again (by design: no
// service trusts that the gateway checked). Live events are read from the
// delivery and conversation streams by one fan-out per process (hub.go: one
// ephemeral JetStream consumer per stream, however many connections), which
// hands each event only to the connections allowed to see it.
//
// Logs carry ids only: never message text, file names or patient names.
package gateway

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"net/http"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	auditv1 "github.com/clinicchat/clinicchat/proto/clinicchat/audit/v1"
	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/policy/messageview"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// Defaults of Config.
const (
	// DefaultKeepAlive is how often an idle event stream gets a ": ping" comment.
	DefaultKeepAlive = 15 * time.Second
	// DefaultMaxUploadBytes is SPEC.md's attachment limit: 25 MiB.
	DefaultMaxUploadBytes int64 = 26_214_400
	// DefaultEventBuffer is how many events may wait for a slow event-stream
	// client before it is told to reload.
	DefaultEventBuffer = 1024
	// DefaultArchiveAfter is the conversation service's default archive period.
	DefaultArchiveAfter = 8760 * time.Hour
	// DefaultMaxStreamsPerIdentity is SPEC.md's limit of concurrent event
	// streams per identity.
	DefaultMaxStreamsPerIdentity = 10
	// DefaultMaxStreams is the per-gateway ceiling of event streams.
	DefaultMaxStreams = 20000
)

// Settings of every http.Server that serves the gateway: a client must send
// its request headers (at most MaxHeaderBytes) within ReadHeaderTimeout, and
// an idle keep-alive connection is closed after IdleTimeout. Bodies are
// bounded per read instead (uploads and event streams run long).
const (
	ReadHeaderTimeout = 10 * time.Second
	IdleTimeout       = 2 * time.Minute
	MaxHeaderBytes    = 64 << 10
)

// Config is the gateway's behaviour. Upstream addresses and the HTTP listen
// address belong to the binary that embeds the gateway.
type Config struct {
	// DevMode marks a development deployment (the all-in-one with --dev).
	// It must be set exactly when Deps.DevIssuer is, so a dev token issuer
	// never ends up in production by accident.
	DevMode bool
	// StepUpWindow is how recently a patient must have authenticated to see
	// a sensitive message on the event stream (default 5m, as delivery's).
	StepUpWindow time.Duration
	// KeepAlive is the interval of ": ping" comments on idle event streams
	// (default 15s).
	KeepAlive time.Duration
	// MaxUploadBytes is the largest attachment accepted (default 26,214,400).
	MaxUploadBytes int64
	// EventBuffer bounds the events queued for one event-stream client
	// (default 1024); a client further behind gets "event: reset".
	EventBuffer int
	// ArchiveAfter is the conversation service's archive period (its
	// --archive-after), told to the web client by GET /v1/clientConfig so
	// the Archived tab can name it (default 8760h).
	ArchiveAfter time.Duration
	// MaxStreamsPerIdentity bounds one identity's concurrent event streams
	// (default 10); past it a stream gets 429 RESOURCE_EXHAUSTED.
	MaxStreamsPerIdentity int
	// MaxStreams bounds the gateway's concurrent event streams (default
	// 20,000); past it a stream gets 429 RESOURCE_EXHAUSTED.
	MaxStreams int
}

// Flags registers the gateway's flags on fs.
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.DurationVar(&c.StepUpWindow, "step-up-window", messageview.DefaultStepUpWindow,
		"how recently a patient must have signed in to see a sensitive message")
	fs.DurationVar(&c.KeepAlive, "sse-keepalive", DefaultKeepAlive, "keep-alive comment interval on /v1/events")
	fs.IntVar(&c.EventBuffer, "sse-buffer", DefaultEventBuffer,
		"events queued per /v1/events client before it is told to reload")
	fs.DurationVar(&c.ArchiveAfter, "archive-after", DefaultArchiveAfter,
		"the conversation service's --archive-after, named to staff by the web client")
	fs.IntVar(&c.MaxStreamsPerIdentity, "max-streams-per-identity", DefaultMaxStreamsPerIdentity,
		"concurrent /v1/events streams one identity may hold")
	fs.IntVar(&c.MaxStreams, "max-streams", DefaultMaxStreams, "concurrent /v1/events streams this gateway serves")
}

// withDefaults fills zero fields with their defaults.
func (c Config) withDefaults() Config {
	if c.StepUpWindow == 0 {
		c.StepUpWindow = messageview.DefaultStepUpWindow
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.MaxUploadBytes == 0 {
		c.MaxUploadBytes = DefaultMaxUploadBytes
	}
	if c.EventBuffer == 0 {
		c.EventBuffer = DefaultEventBuffer
	}
	if c.ArchiveAfter == 0 {
		c.ArchiveAfter = DefaultArchiveAfter
	}
	if c.MaxStreamsPerIdentity == 0 {
		c.MaxStreamsPerIdentity = DefaultMaxStreamsPerIdentity
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = DefaultMaxStreams
	}
	return c
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.StepUpWindow < 0 {
		errs = append(errs, errors.New("--step-up-window must not be negative"))
	}
	if c.KeepAlive < 0 {
		errs = append(errs, errors.New("--sse-keepalive must not be negative"))
	}
	if c.MaxUploadBytes < 0 {
		errs = append(errs, errors.New("the upload limit must not be negative"))
	}
	if c.EventBuffer < 0 {
		errs = append(errs, errors.New("--sse-buffer must not be negative"))
	}
	if c.ArchiveAfter < 0 {
		errs = append(errs, errors.New("--archive-after must not be negative"))
	}
	if c.MaxStreamsPerIdentity < 0 || c.MaxStreams < 0 {
		errs = append(errs, errors.New("--max-streams-per-identity and --max-streams must not be negative"))
	}
	return errors.Join(errs...)
}

// Deps are the gateway's collaborators.
type Deps struct {
	// Log receives ids only (default: no logging).
	Log *zap.Logger
	// Verifier checks bearer tokens.
	Verifier auth.Verifier
	// DevIssuer serves POST /v1/dev/tokens; nil in production.
	DevIssuer *auth.DevIssuer
	// JS reads the delivery and conversation streams for /v1/events.
	JS jetstream.JetStream
	// Connections to the upstream services. Each call carries the caller's
	// token as "authorization" metadata.
	Conversation, Delivery, Preferences, Attachment, Audit grpc.ClientConnInterface
	// Ready reports whether the gateway can serve (upstreams and NATS
	// reachable); nil means always ready.
	Ready func(context.Context) error
	// Metrics are other components' collectors served on /metrics too (the
	// all-in-one's audit verification status).
	Metrics []prometheus.Collector
}

// Server is the gateway. Serve Handler() on an http.Server and call Shutdown
// when stopping.
type Server struct {
	cfg  Config
	log  *zap.Logger
	deps Deps

	marshaler *runtime.JSONPb
	mux       *runtime.ServeMux
	handler   http.Handler
	metrics   *metrics

	conversations conversationv1.ConversationServiceClient
	delivery      deliveryv1.DeliveryServiceClient
	attachments   attachmentv1.AttachmentServiceClient

	// closing is closed by Shutdown: event streams end and new ones are
	// refused. mu orders closing against streams.Add.
	mu      sync.Mutex
	closing chan struct{}
	// streams counts running event streams (and their background work).
	streams sync.WaitGroup
	// hub is the event fan-out; limits bound the streams.
	hub    *hub
	limits *streamLimits
	// onOverflow, when set (by tests), is called when an event stream's
	// buffer overflows.
	onOverflow func()
	// raw are the connections event streams took over (hijack.go);
	// noHijack (tests) keeps every stream on net/http.
	raw      rawConns
	noHijack bool
	// noIdlePoll (tests) keeps an idle taken-over stream's goroutine,
	// waiting in a read, as on other OSes than Linux.
	noIdlePoll bool
	// noHotPath (tests) sends sends and markReads to grpc-gateway's
	// generated handlers too (hotpath.go).
	noHotPath atomic.Bool
	// sseBufs are the event streams' block buffers, lent for a batch each
	// (sse.go).
	sseBufs sseBufs
	// renderHint is the length of the last message and conversation
	// rendered for the event streams (render).
	renderHint [2]atomic.Int64
	// headerNoStore and headerNoSniff are the values of the headers every
	// response carries (instrument), shared by every response.
	headerNoStore, headerNoSniff []string
}

// newMarshaler is the REST API's JSON, also of /v1/events' data.
func newMarshaler() *runtime.JSONPb {
	return &runtime.JSONPb{
		MarshalOptions: protojson.MarshalOptions{UseProtoNames: false, EmitUnpopulated: true},
		// Strict: a misspelt field ("sensitve") is refused, naming it,
		// instead of silently dropped (decodeError).
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}
}

// New builds the gateway and registers every route.
func New(cfg Config, deps Deps) (*Server, error) {
	cfg = cfg.withDefaults()
	var problems []error
	if err := cfg.Validate(); err != nil {
		problems = append(problems, err)
	}
	if deps.Verifier == nil {
		problems = append(problems, errors.New("gateway: Deps.Verifier is required"))
	}
	if deps.JS == nil {
		problems = append(problems, errors.New("gateway: Deps.JS is required"))
	}
	for name, cc := range map[string]grpc.ClientConnInterface{
		"Conversation": deps.Conversation, "Delivery": deps.Delivery, "Preferences": deps.Preferences,
		"Attachment": deps.Attachment, "Audit": deps.Audit,
	} {
		if cc == nil {
			problems = append(problems, fmt.Errorf("gateway: Deps.%s is required", name))
		}
	}
	if cfg.DevMode && deps.DevIssuer == nil {
		problems = append(problems, errors.New("gateway: DevMode needs Deps.DevIssuer"))
	}
	if !cfg.DevMode && deps.DevIssuer != nil {
		problems = append(problems, errors.New("gateway: Deps.DevIssuer is set but DevMode is off"))
	}
	if err := errors.Join(problems...); err != nil {
		return nil, err
	}
	if deps.Log == nil {
		deps.Log = zap.NewNop()
	}
	deps.Verifier = auth.NewCachingVerifier(deps.Verifier, 0)
	s := &Server{
		cfg:           cfg,
		log:           deps.Log.Named("gateway"),
		deps:          deps,
		marshaler:     newMarshaler(),
		metrics:       newMetrics(),
		conversations: conversationv1.NewConversationServiceClient(deps.Conversation),
		delivery:      deliveryv1.NewDeliveryServiceClient(deps.Delivery),
		attachments:   attachmentv1.NewAttachmentServiceClient(deps.Attachment),
		closing:       make(chan struct{}),
		headerNoStore: []string{"no-store"},
		headerNoSniff: []string{"nosniff"},
	}
	s.hub = newHub(s)
	s.limits = newStreamLimits(cfg.MaxStreamsPerIdentity, cfg.MaxStreams)
	s.metrics.registerHub(func() float64 { return float64(s.hub.queued.Load()) })
	if err := s.routes(); err != nil {
		return nil, err
	}
	if onNew != nil {
		onNew(s) // tests (hotpath.go)
	}
	for _, c := range deps.Metrics {
		if err := s.metrics.reg.Register(c); err != nil {
			return nil, fmt.Errorf("gateway metrics: %w", err)
		}
	}
	return s, nil
}

// Handler is the gateway's whole HTTP surface.
func (s *Server) Handler() http.Handler { return s.handler }

// Shutdown ends every open event stream (each stops after the event it is
// writing; clients reconnect elsewhere with Last-Event-ID), refuses new ones,
// and waits until they and their background calls have finished or ctx ends.
// Ordinary requests are not affected: stop those with http.Server.Shutdown,
// which may run at the same time.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.shuttingDown() {
		close(s.closing)
	}
	s.mu.Unlock()
	s.raw.wakeAll() // streams on taken-over connections wait in a read
	done := make(chan struct{})
	go func() { s.streams.Wait(); close(done) }()
	select {
	case <-done:
		s.hub.stop()
		return nil
	case <-ctx.Done():
		// Streams stuck writing to clients that do not read: their
		// taken-over connections are closed here (http.Server does not
		// know them).
		s.raw.closeAll()
		return fmt.Errorf("gateway shutdown: event streams still open: %w", ctx.Err())
	}
}

func (s *Server) shuttingDown() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// routes builds the handler tree.
//
//	/healthz /readyz /metrics      plain handlers, no auth
//	POST /v1/dev/tokens            dev mode only, no auth
//	GET /v1/clientConfig           what the web client needs before sign-in, no auth
//	/v1/...                        the grpc-gateway mux: every route needs a
//	                               verified bearer token (auth middleware, and
//	                               the routing-error handler for unknown paths)
//	GET / and /app/...             the web client (web.go), no auth
func (s *Server) routes() error {
	s.mux = runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, apiMarshaler{s.marshaler}),
		runtime.WithErrorHandler(s.handleError),
		runtime.WithRoutingErrorHandler(s.handleRoutingError),
		runtime.WithStreamErrorHandler(s.handleStreamError),
		runtime.WithIncomingHeaderMatcher(incomingHeader),
		runtime.WithMetadata(affinity),
		// No upstream metadata or trailer becomes a response header
		// (Grpc-Metadata-*, Grpc-Trailer-*).
		runtime.WithOutgoingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithOutgoingTrailerMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithDisablePathLengthFallback(),
		runtime.WithDisableHTTPMethodOverride(),
		runtime.WithMiddlewares(s.tagRoute, s.requireAuth, s.requireJSON),
	)
	ctx := context.Background() // the Register functions only use it for the FromEndpoint variants
	register := []func() error{
		func() error {
			return conversationv1.RegisterConversationServiceHandlerClient(ctx, s.mux, s.conversations)
		},
		func() error { return deliveryv1.RegisterDeliveryServiceHandlerClient(ctx, s.mux, s.delivery) },
		func() error {
			return preferencesv1.RegisterPreferencesServiceHandlerClient(ctx, s.mux,
				preferencesv1.NewPreferencesServiceClient(s.deps.Preferences))
		},
		func() error {
			return attachmentv1.RegisterAttachmentServiceHandlerClient(ctx, s.mux, s.attachments)
		},
		func() error {
			return auditv1.RegisterAuditServiceHandlerClient(ctx, s.mux, auditv1.NewAuditServiceClient(s.deps.Audit))
		},
		// The gateway's own handlers. Registered last so they are matched
		// first: "/v1/{name=attachments/*}" would otherwise take ":download".
		func() error { return s.mux.HandlePath(http.MethodPost, routeUpload, s.upload) },
		func() error { return s.mux.HandlePath(http.MethodGet, routeDownload, s.download) },
		func() error { return s.mux.HandlePath(http.MethodGet, routeEvents, s.events) },
		func() error { return s.mux.HandlePath(http.MethodGet, routeExport, s.exportAudit) },
		func() error { return s.mux.HandlePath(http.MethodGet, routeConversationExport, s.exportConversation) },
	}
	for _, r := range register {
		if err := r(); err != nil {
			return fmt.Errorf("gateway routes: %w", err)
		}
	}

	top := http.NewServeMux()
	top.Handle("GET /healthz", s.plainRoute("/healthz", http.HandlerFunc(s.healthz)))
	top.Handle("GET /readyz", s.plainRoute("/readyz", http.HandlerFunc(s.readyz)))
	top.Handle("GET /metrics", s.plainRoute("/metrics", s.metrics.handler()))
	top.Handle("POST /v1/dev/tokens", s.plainRoute("/v1/dev/tokens", http.HandlerFunc(s.devTokens)))
	top.Handle("GET /v1/clientConfig", s.plainRoute("/v1/clientConfig", http.HandlerFunc(s.clientConfig)))
	top.Handle("/v1/", s.mux)
	web, err := newWebHandler(http.HandlerFunc(s.notFound))
	if err != nil {
		return err
	}
	top.Handle("GET /{$}", s.plainRoute("/", web))
	top.Handle("GET /app/", s.plainRoute("/app/", web))
	top.Handle("/", http.HandlerFunc(s.notFound))
	// Traced when tracing is on: the span of each request is the root of
	// its trace (a client's traceparent is only linked).
	s.handler = telemetry.HTTPHandler(s.instrument(s.apiFirst(top)), "gateway")
	return nil
}

// apiFirst sends a request of the API (a clean /v1/... path that is not
// one of top's own /v1 routes) straight to the grpc-gateway mux, where top
// would send it after matching its patterns (a copy of the request's path
// segments, ~5% of an API call's allocations); anything else, top serves
// (its redirects of unclean paths, its 404 and 405 included).
func (s *Server) apiFirst(top *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isAPIPath(r) {
			if r.Method == http.MethodPost && s.serveHot(w, r) {
				return // a send or a markRead (hotpath.go)
			}
			s.mux.ServeHTTP(w, r)
			return
		}
		top.ServeHTTP(w, r)
	})
}

// isAPIPath says whether apiFirst sends r to the grpc-gateway mux.
func isAPIPath(r *http.Request) bool {
	p := r.URL.Path
	return r.Method != http.MethodConnect && r.URL.RawPath == "" && strings.HasPrefix(p, "/v1/") &&
		p != "/v1/dev/tokens" && p != "/v1/clientConfig" && path.Clean(p) == p
}

// Routes of the gateway's own handlers, in grpc-gateway path syntax.
const (
	routeUpload   = "/v1/attachments"
	routeDownload = "/v1/{name=attachments/*}:download"
	routeEvents   = "/v1/events"
)

// healthz answers 200 while the process runs.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, []byte(`{"status":"SERVING"}`))
}

// readyz answers 200 when Deps.Ready says the upstreams are reachable, and
// 503 while shutting down.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.shuttingDown() {
		s.writeError(w, r, unavailable("The gateway is shutting down"))
		return
	}
	if s.deps.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if err := s.deps.Ready(ctx); err != nil {
			s.log.Warn("not ready", zap.Error(err))
			s.writeError(w, r, unavailable("The gateway cannot reach its upstream services yet"))
			return
		}
	}
	writeJSON(w, http.StatusOK, []byte(`{"status":"SERVING"}`))
}
