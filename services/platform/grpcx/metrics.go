package grpcx

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ServerMetrics are a server's Prometheus metrics: the series of
// go-grpc-middleware's providers/prometheus ServerMetrics with the handling
// time histogram (grpc_server_started_total, grpc_server_handled_total by
// grpc_code, grpc_server_msg_received_total, grpc_server_msg_sent_total,
// grpc_server_handling_seconds; labels grpc_type, grpc_service,
// grpc_method), counted the same way. Each method's series are looked up
// once and kept, instead of five label lookups per call (each a hash of
// three or four labels and a map read under a lock).
type ServerMetrics struct {
	started, handled, received, sent *prometheus.CounterVec
	handling                         *prometheus.HistogramVec

	// methods are the series by methodKey, each a *methodMetrics.
	methods sync.Map
}

func newServerMetrics(buckets []float64) *ServerMetrics {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	return &ServerMetrics{
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_started_total",
			Help: "Total number of RPCs started on the server.",
		}, labels),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total",
			Help: "Total number of RPCs completed on the server, regardless of success or failure.",
		}, append(labels[:3:3], "grpc_code")),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_received_total",
			Help: "Total number of RPC stream messages received on the server.",
		}, labels),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_sent_total",
			Help: "Total number of gRPC stream messages sent by the server.",
		}, labels),
		handling: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
			Buckets: buckets,
		}, labels),
	}
}

// Describe implements prometheus.Collector.
func (m *ServerMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.started.Describe(ch)
	m.handled.Describe(ch)
	m.received.Describe(ch)
	m.sent.Describe(ch)
	m.handling.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *ServerMetrics) Collect(ch chan<- prometheus.Metric) {
	m.started.Collect(ch)
	m.handled.Collect(ch)
	m.received.Collect(ch)
	m.sent.Collect(ch)
	m.handling.Collect(ch)
}

// Call types, the grpc_type label.
const (
	typeUnary        = "unary"
	typeClientStream = "client_stream"
	typeServerStream = "server_stream"
	typeBidiStream   = "bidi_stream"
)

func callType(clientStream, serverStream bool) string {
	switch {
	case !clientStream && !serverStream:
		return typeUnary
	case clientStream && !serverStream:
		return typeClientStream
	case !clientStream && serverStream:
		return typeServerStream
	}
	return typeBidiStream
}

// InitializeMetrics creates every series of every method server has
// registered at zero (grpc_server_handled_total for every code).
func (m *ServerMetrics) InitializeMetrics(server interface {
	GetServiceInfo() map[string]grpc.ServiceInfo
}) {
	for service, info := range server.GetServiceInfo() {
		for _, mi := range info.Methods {
			mm := m.method(callType(mi.IsClientStream, mi.IsServerStream), "/"+service+"/"+mi.Name)
			for c := range mm.handled {
				mm.handledFor(codes.Code(c))
			}
		}
	}
}

type methodKey struct{ typ, fullMethod string }

// methodMetrics are one method's series. Its handled series are looked up
// at a call's first use of the code.
type methodMetrics struct {
	m                       *ServerMetrics
	typ, service, method    string
	started, received, sent prometheus.Counter
	handling                prometheus.Observer
	handled                 [codes.Unauthenticated + 1]atomic.Pointer[prometheus.Counter]
}

// method is the series of the call type and full method name, created at
// the first call.
func (m *ServerMetrics) method(typ, fullMethod string) *methodMetrics {
	k := methodKey{typ, fullMethod}
	if v, ok := m.methods.Load(k); ok {
		return v.(*methodMetrics)
	}
	service, method := splitMethod(fullMethod)
	mm := &methodMetrics{m: m, typ: typ, service: service, method: method,
		started:  m.started.WithLabelValues(typ, service, method),
		received: m.received.WithLabelValues(typ, service, method),
		sent:     m.sent.WithLabelValues(typ, service, method),
		handling: m.handling.WithLabelValues(typ, service, method),
	}
	v, _ := m.methods.LoadOrStore(k, mm)
	return v.(*methodMetrics)
}

// handledFor is the method's grpc_server_handled_total series of code.
func (mm *methodMetrics) handledFor(code codes.Code) prometheus.Counter {
	if int(code) >= len(mm.handled) {
		return mm.m.handled.WithLabelValues(mm.typ, mm.service, mm.method, code.String())
	}
	p := &mm.handled[code]
	if c := p.Load(); c != nil {
		return *c
	}
	c := mm.m.handled.WithLabelValues(mm.typ, mm.service, mm.method, code.String())
	p.Store(&c)
	return c
}

// done counts a finished call.
func (mm *methodMetrics) done(err error, start time.Time) {
	s, ok := status.FromError(err)
	if !ok {
		s = status.FromContextError(err) // as grpc itself reports it
	}
	mm.handledFor(s.Code()).Inc()
	mm.handling.Observe(time.Since(start).Seconds())
}

// splitMethod is "/pkg.Service/Method"'s service and method.
func splitMethod(fullMethod string) (service, method string) {
	fullMethod = strings.TrimPrefix(fullMethod, "/")
	if i := strings.Index(fullMethod, "/"); i >= 0 {
		return fullMethod[:i], fullMethod[i+1:]
	}
	return "unknown", "unknown"
}

// UnaryServerInterceptor counts unary calls.
func (m *ServerMetrics) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		mm := m.method(typeUnary, info.FullMethod)
		mm.started.Inc()
		mm.received.Inc()
		resp, err := handler(ctx, req)
		if err == nil {
			mm.sent.Inc()
		}
		mm.done(err, start)
		return resp, err
	}
}

// StreamServerInterceptor counts streaming calls and their messages.
func (m *ServerMetrics) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		mm := m.method(callType(info.IsClientStream, info.IsServerStream), info.FullMethod)
		mm.started.Inc()
		err := handler(srv, &countedStream{ServerStream: ss, mm: mm})
		mm.done(err, start)
		return err
	}
}

// countedStream counts the messages a stream sends and receives.
type countedStream struct {
	grpc.ServerStream
	mm *methodMetrics
}

func (s *countedStream) SendMsg(msg any) error {
	err := s.ServerStream.SendMsg(msg)
	if err == nil {
		s.mm.sent.Inc()
	}
	return err
}

func (s *countedStream) RecvMsg(msg any) error {
	err := s.ServerStream.RecvMsg(msg)
	if err == nil {
		s.mm.received.Inc()
	}
	return err
}
