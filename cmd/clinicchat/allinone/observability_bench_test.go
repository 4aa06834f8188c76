package allinone_test

import (
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// BenchmarkSendThroughputTraced is BenchmarkSendThroughput with tracing on:
// every span of every send sampled, recorded and batched to an exporter that
// drops them (no network). Its CPU per message against the untraced run is
// what tracing costs; off (the default), nothing is instrumented.
func BenchmarkSendThroughputTraced(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	telemetry.Install(tp)
	b.Cleanup(func() {
		telemetry.Install(noop.NewTracerProvider())
		_ = tp.Shutdown(b.Context())
	})
	BenchmarkSendThroughput(b)
}
