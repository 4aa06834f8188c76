// Package telemetry is clinicchat's OpenTelemetry tracing: the process's
// tracer provider from the standard OTEL_* environment variables, the gRPC
// stats handlers and HTTP middleware that trace every hop, and the W3C trace
// context carried through the transactional outbox and NATS message headers,
// so one trace spans send → commit → publish → consumers → the recipient's
// event stream.
//
// Tracing is off unless configured (Setup): the process keeps OpenTelemetry's
// no-op provider, no stats handler or middleware is installed, no outbox row
// carries a trace context and no NATS header is written, so it costs nothing.
//
// The provider is OpenTelemetry's process-wide one (otel.SetTracerProvider),
// set once by a binary's main before anything is built: the instrumentation
// libraries read it, and so does the code here.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
)

// InstrumentationName names the tracer of clinicchat's own spans (outbox
// publish, event consumers, the gateway's fan-out).
const InstrumentationName = "github.com/clinicchat/clinicchat"

// HeaderTraceparent is the W3C trace context header, in NATS messages as in
// HTTP.
const HeaderTraceparent = "traceparent"

// Config is what the OTEL_* environment says about traces.
type Config struct {
	// Enabled is true when an exporter is configured.
	Enabled bool
	// Protocol is "grpc" or "http/protobuf".
	Protocol string
}

// ConfigFromEnv reads the standard variables: tracing is on when
// OTEL_TRACES_EXPORTER is "otlp", or when it is unset and an OTLP endpoint
// (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is
// set; OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none turn it off. The
// protocol is OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL
// (default http/protobuf). The exporter itself reads the endpoint, headers,
// timeout, TLS and compression variables; the SDK reads OTEL_SERVICE_NAME,
// OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG) and OTEL_BSP_*.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return Config{}, nil
	}
	var c Config
	switch exp := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); exp {
	case "none":
		return Config{}, nil
	case "otlp":
		c.Enabled = true
	case "":
		c.Enabled = getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
		if !c.Enabled {
			return Config{}, nil
		}
	default:
		return Config{}, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: only otlp or none are supported", exp)
	}
	c.Protocol = strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
	if c.Protocol == "" {
		c.Protocol = strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_PROTOCOL"))
	}
	if c.Protocol == "" {
		c.Protocol = "http/protobuf"
	}
	if c.Protocol != "grpc" && c.Protocol != "http/protobuf" {
		return Config{}, fmt.Errorf("OTLP protocol %q: want grpc or http/protobuf", c.Protocol)
	}
	return c, nil
}

// Setup configures tracing from the environment for service (the default
// service.name; OTEL_SERVICE_NAME overrides it). When tracing is off it
// changes nothing and returns a shutdown that does nothing. Otherwise it
// sets the process's tracer provider (OTLP exporter, batched) and the W3C
// trace context propagator; call shutdown at exit to flush.
func Setup(ctx context.Context, service string) (shutdown func(context.Context) error, err error) {
	cfg, err := ConfigFromEnv(os.Getenv)
	if err != nil || !cfg.Enabled {
		return func(context.Context) error { return nil }, err
	}
	var exp sdktrace.SpanExporter
	if cfg.Protocol == "grpc" {
		exp, err = otlptracegrpc.New(ctx)
	} else {
		exp, err = otlptracehttp.New(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("otlp trace exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", service)),
		resource.WithFromEnv(), resource.WithTelemetrySDK(), resource.WithHost())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	Install(tp)
	return tp.Shutdown, nil
}

// Install makes tp the process's tracer provider, with the W3C trace context
// propagator (tests install one with an in-memory exporter).
func Install(tp trace.TracerProvider) {
	otel.SetTextMapPropagator(propagation.TraceContext{})
	otel.SetTracerProvider(tp)
}

// Enabled reports whether spans are recorded: a tracer provider of the SDK
// is installed. Builders install instrumentation only then.
func Enabled() bool {
	_, ok := otel.GetTracerProvider().(*sdktrace.TracerProvider)
	return ok
}

// Tracer is the tracer of clinicchat's own spans.
func Tracer() trace.Tracer { return otel.GetTracerProvider().Tracer(InstrumentationName) }

// GRPCServerHandler traces every call a server receives (nil when off):
// grpcx's server takes it as a stats handler, and its in-process channel
// calls it directly.
func GRPCServerHandler() stats.Handler {
	if !Enabled() {
		return nil
	}
	return otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(otel.GetTracerProvider()), otelgrpc.WithPropagators(propagation.TraceContext{}))
}

// GRPCPublicServerOptions trace every call a public server (the gateway's
// gRPC edge) receives: a caller's traceparent is linked, never adopted as
// the parent (none when off).
func GRPCPublicServerOptions() []grpc.ServerOption {
	if !Enabled() {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithPublicEndpoint(),
		otelgrpc.WithTracerProvider(otel.GetTracerProvider()), otelgrpc.WithPropagators(propagation.TraceContext{})))}
}

// GRPCDialOptions trace every call a client connection makes (none when off).
func GRPCDialOptions() []grpc.DialOption {
	h := GRPCClientHandler()
	if h == nil {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(h)}
}

// GRPCClientHandler is the stats handler of GRPCDialOptions (nil when off).
func GRPCClientHandler() stats.Handler {
	if !Enabled() {
		return nil
	}
	return otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(otel.GetTracerProvider()), otelgrpc.WithPropagators(propagation.TraceContext{}))
}

// HTTPHandler traces every request h serves (h itself when off). The edge is
// public: a client's traceparent is linked, never adopted as the parent, so
// nobody outside chooses our trace ids.
func HTTPHandler(h http.Handler, operation string) http.Handler {
	if !Enabled() {
		return h
	}
	return otelhttp.NewHandler(h, operation, otelhttp.WithPublicEndpointFn(func(*http.Request) bool { return true }),
		otelhttp.WithTracerProvider(otel.GetTracerProvider()), otelhttp.WithPropagators(propagation.TraceContext{}))
}

// Traceparent is ctx's span context as a W3C traceparent, for an outbox row;
// "" when ctx carries no valid span context (always, when tracing is off).
func Traceparent(ctx context.Context) string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ""
	}
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c[HeaderTraceparent]
}

// FromTraceparent returns ctx with the remote span context tp names (ctx
// unchanged when tp is empty or malformed).
func FromTraceparent(ctx context.Context, tp string) context.Context {
	if tp == "" {
		return ctx
	}
	return propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{HeaderTraceparent: tp})
}

// FromHeader returns ctx with the remote span context of a NATS message's
// traceparent header, and whether it had one.
func FromHeader(ctx context.Context, h nats.Header) (context.Context, bool) {
	tp := headerValue(h, HeaderTraceparent)
	if tp == "" {
		return ctx, false
	}
	ctx = FromTraceparent(ctx, tp)
	return ctx, trace.SpanContextFromContext(ctx).IsValid()
}

// headerValue reads a NATS header as written (NATS does not canonicalize
// keys), falling back to the canonical HTTP form.
func headerValue(h nats.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	if v := h[http.CanonicalHeaderKey(key)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// StartConsumer starts the span of consumer handling one NATS message of
// subject whose trace context is in its headers: a consumer span, child of
// the span that published the event. Without a trace context (tracing off
// where the event was written) or with tracing off here it starts nothing
// and returns ctx with a no-op end.
func StartConsumer(ctx context.Context, h nats.Header, consumer, subject string) (context.Context, func(error)) {
	pctx, ok := FromHeader(ctx, h)
	if !ok || !Enabled() {
		return ctx, func(error) {}
	}
	ctx, span := Tracer().Start(pctx, "consume "+consumer, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"),
			attribute.String("messaging.consumer.group.name", consumer),
			attribute.String("messaging.destination.name", subject)))
	return ctx, func(err error) {
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}
