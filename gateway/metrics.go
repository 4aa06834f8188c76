package gateway

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"

	"github.com/clinicchat/clinicchat/services/platform/debugserver"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
)

// metrics are the gateway's Prometheus metrics, in a registry the Server
// owns. Routes are labelled by their pattern ("/v1/{name=conversations/*}"),
// never by the raw path, so ids never become label values.
type metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	sseClients  prometheus.Gauge
	sseEvents   *prometheus.CounterVec
	sseResets   *prometheus.CounterVec
	sseRefused  *prometheus.CounterVec
	sseDropped  prometheus.Counter
	sseWrites   prometheus.Counter
	hubDecoded  prometheus.Counter
	convViews   *prometheus.CounterVec
	uploadBytes prometheus.Counter
	limited     *prometheus.CounterVec
	// sseEventsBy are sseEvents' series of the events a stream writes,
	// looked up once (a label lookup per written event and stream was a
	// hash of the label and a map read under a lock).
	sseEventsBy map[string]prometheus.Counter
	// series caches requests' and latency's series by requestKey.
	seriesMu sync.RWMutex
	series   map[requestKey]*requestSeries
}

func newMetrics(extra ...prometheus.Collector) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinicchat_gateway_http_requests_total",
			Help: "HTTP requests by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "clinicchat_gateway_http_request_duration_seconds",
			Help:    "HTTP request latency by route pattern, method and status code (the /v1/events stream is not included: it lasts as long as the client stays).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route", "method", "code"}),
		sseClients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clinicchat_gateway_sse_clients",
			Help: "Open /v1/events streams.",
		}),
		sseEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinicchat_gateway_sse_events_total",
			Help: "Events written to /v1/events streams, by event type.",
		}, []string{"event"}),
		sseResets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinicchat_gateway_sse_resets_total",
			Help: "Event streams ended with event: reset, by reason.",
		}, []string{"reason"}),
		sseRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinicchat_gateway_sse_refused_total",
			Help: "/v1/events streams refused, by reason: per_identity and gateway_full (429), unavailable (503: NATS unreachable), shutting_down.",
		}, []string{"reason"}),
		sseDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clinicchat_gateway_sse_dropped_events_total",
			Help: "Events dropped for event-stream clients that read too slowly (each such client is told to reload).",
		}),
		sseWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clinicchat_gateway_sse_writes_total",
			Help: "Writes to /v1/events connections: each writes every event queued for the stream at that moment, so fewer than events under load.",
		}),
		hubDecoded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clinicchat_gateway_hub_events_decoded_total",
			Help: "Events the fan-out decoded (once per event with an audience on this gateway; events of practices without open streams here are not decoded).",
		}),
		convViews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinicchat_gateway_conversation_views_total",
			Help: "Conversation views rendered for conversation.updated (once per user and event), by source: fetch (read back from the conversation service) or event (the event's thread with the user's known state).",
		}, []string{"source"}),
		uploadBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clinicchat_gateway_upload_bytes_total",
			Help: "Attachment bytes streamed to the attachment service.",
		}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinicchat_gateway_limited_total",
			Help: "Requests refused at the edge by a limit (HTTP 429 or 413), by limit.",
		}, []string{"limit"}),
	}
	m.sseEventsBy = map[string]prometheus.Counter{}
	for _, ev := range []string{EventMessageCreated, EventMessageUpdated, EventConversationUpdated} {
		m.sseEventsBy[ev] = m.sseEvents.WithLabelValues(ev)
	}
	m.reg.MustRegister(m.requests, m.latency, m.sseClients, m.sseEvents, m.sseResets, m.sseRefused, m.sseDropped, m.sseWrites,
		m.hubDecoded, m.convViews, m.uploadBytes, m.limited,
		debugserver.GoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(extra...)
	return m
}

// registerHub adds the fan-out's queue depth: events waiting in event-stream
// connections' queues.
func (m *metrics) registerHub(queued func() float64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "clinicchat_gateway_hub_queue_depth",
		Help: "Events queued by the fan-out and not yet written to their event-stream clients.",
	}, queued))
}

// Gatherer is the gateway's metrics registry, for an operator listener
// (debugserver.StartMetrics) besides /metrics.
func (s *Server) Gatherer() prometheus.Gatherer { return s.metrics.reg }

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// observe records one finished request.
func (m *metrics) observe(route, method string, code int, d time.Duration) {
	k := requestKey{route, method, code}
	m.seriesMu.RLock()
	rs := m.series[k]
	m.seriesMu.RUnlock()
	if rs == nil {
		c := strconv.Itoa(code)
		rs = &requestSeries{requests: m.requests.WithLabelValues(route, method, c)}
		if route != routeEvents {
			rs.latency = m.latency.WithLabelValues(route, method, c)
		}
		m.seriesMu.Lock()
		if m.series == nil {
			m.series = map[requestKey]*requestSeries{}
		}
		m.series[k] = rs
		m.seriesMu.Unlock()
	}
	rs.requests.Inc()
	if rs.latency != nil {
		rs.latency.Observe(d.Seconds())
	}
}

// requestKey names a request's series: route patterns, known methods and
// the codes the handlers write are few, so the cache stays small.
type requestKey struct {
	route, method string
	code          int
}

// requestSeries are one requestKey's series, looked up once.
type requestSeries struct {
	requests prometheus.Counter
	latency  prometheus.Observer // nil for the event stream
}

// routeTag carries a request's route pattern out of the handlers to the
// instrumenting middleware.
type routeTag struct{ pattern string }

type routeKey struct{}

// routeUnmatched labels requests that matched no route.
const routeUnmatched = "unmatched"

// routeOf returns the request's route pattern, for logs and metrics.
func routeOf(r *http.Request) string {
	if t, ok := r.Context().Value(routeKey{}).(*routeTag); ok && t.pattern != routeUnmatched {
		return t.pattern // set by tagRoute or plainRoute
	}
	if p, ok := runtime.HTTPPattern(r.Context()); ok {
		return p.String()
	}
	return routeUnmatched
}

func setRoute(ctx context.Context, pattern string) {
	if t, ok := ctx.Value(routeKey{}).(*routeTag); ok {
		t.pattern = pattern
	}
}

// tagRoute is a grpc-gateway middleware that records the matched pattern.
// grpc-gateway applies its middlewares to each route's handler once, when
// the route is registered, so the handler it returns serves one pattern
// only: its text (Pattern.String, seven allocations) is made on the first
// request and kept.
func (s *Server) tagRoute(next runtime.HandlerFunc) runtime.HandlerFunc {
	var pattern atomic.Pointer[string]
	return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
		if p := pattern.Load(); p != nil {
			setRoute(r.Context(), *p)
		} else if hp, ok := runtime.HTTPPattern(r.Context()); ok {
			text := hp.String()
			pattern.Store(&text)
			setRoute(r.Context(), text)
		}
		next(w, r, params)
	}
}

// plainRoute tags a handler of the top-level mux with its pattern.
func (s *Server) plainRoute(pattern string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		setRoute(r.Context(), pattern)
		h.ServeHTTP(w, r)
	})
}

// knownMethod keeps the method label's cardinality bounded.
func knownMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return m
	}
	return "OTHER"
}

// instrument counts and times every request, and turns a panic into a
// masked 500 (a deliberate http.ErrAbortHandler still aborts the response).
func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		tag := &routeTag{pattern: routeUnmatched}
		rec := &statusRecorder{ResponseWriter: w}
		r = r.WithContext(context.WithValue(r.Context(), routeKey{}, tag))
		// Every response may carry health data: never cached, never sniffed
		// into something else (a handler may loosen Cache-Control for
		// static web assets).
		// (Their values are shared, capacity 1: Set replaces them and Add
		// appends to a copy.)
		h := w.Header()
		h["Cache-Control"] = s.headerNoStore[:1:1]
		h["X-Content-Type-Options"] = s.headerNoSniff[:1:1]
		defer func() {
			p := recover()
			code := rec.status()
			if p != nil && p != http.ErrAbortHandler { //nolint:errorlint // sentinel compared as net/http does
				id := ids.New()
				s.log.Error("panic", zap.String(logkeys.ErrorID, id), zap.String("route", tag.pattern), zap.Any("panic", p),
					zap.Stack("stack"))
				if !rec.wrote {
					s.writeError(rec, r, newAPIError(codes.Internal, ReasonInternal, maskedPrefix+" (error id "+id+")"))
				}
				code = http.StatusInternalServerError
			}
			s.metrics.observe(tag.pattern, knownMethod(r.Method), code, time.Since(start))
			if span := trace.SpanFromContext(r.Context()); span.IsRecording() {
				span.SetName(knownMethod(r.Method) + " " + tag.pattern)
				span.SetAttributes(attribute.String("http.route", tag.pattern))
			}
			if p == http.ErrAbortHandler { //nolint:errorlint
				panic(p)
			}
		}()
		next.ServeHTTP(rec, r)
	})
}

// statusRecorder remembers the status code written. Unwrap lets
// http.ResponseController reach the connection (flush, write deadlines).
type statusRecorder struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (w *statusRecorder) WriteHeader(code int) {
	if !w.wrote {
		w.code, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if !w.wrote {
		w.code, w.wrote = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

// Flush implements http.Flusher for code that type-asserts it.
func (w *statusRecorder) Flush() {
	if !w.wrote {
		w.code, w.wrote = http.StatusOK, true
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack takes the connection over (an HTTP/1.1 event stream, hijack.go),
// recorded as the 200 the stream then writes itself.
func (w *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil && !w.wrote {
		w.code, w.wrote = http.StatusOK, true
	}
	return c, brw, err
}

func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusRecorder) status() int {
	if !w.wrote {
		return http.StatusOK
	}
	return w.code
}
