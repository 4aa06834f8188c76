package grpcx_test

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/test/bufconn"

	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkUnaryHop is one gRPC call over an in-process connection (a
// health check: no token, no handler work), to isolate what a hop costs:
// "bare" is a plain grpc.Server, "grpcx" adds our interceptors and the
// Prometheus server metrics with tracing off (the default), "inprocess" is
// grpcx through Server.InProcess (no bufconn, no HTTP/2), "traced" adds
// the otelgrpc client and server handlers with every span recorded and
// batched to an exporter that drops them.
//
//	go test ./services/platform/grpcx -run XXX -bench UnaryHop -benchmem -count 5
func BenchmarkUnaryHop(b *testing.B) {
	run := func(b *testing.B, srv *grpc.Server, h *health.Server) {
		h.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		lis := bufconn.Listen(1 << 20)
		go func() { _ = srv.Serve(lis) }()
		b.Cleanup(srv.Stop)
		cc, err := grpcx.DialListener(lis.DialContext)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = cc.Close() })
		client := healthpb.NewHealthClient(cc)
		ctx := context.Background()
		for b.Loop() {
			if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	}
	_, verifier := testkit.NewTokens()
	b.Run("bare", func(b *testing.B) {
		s, h := grpc.NewServer(), health.NewServer()
		healthpb.RegisterHealthServer(s, h)
		run(b, s, h)
	})
	b.Run("grpcx", func(b *testing.B) {
		s := grpcx.NewServer(zap.NewNop(), verifier)
		run(b, s.Server, s.Health)
	})
	b.Run("inprocess", func(b *testing.B) {
		s := grpcx.NewServer(zap.NewNop(), verifier)
		s.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		client := healthpb.NewHealthClient(s.InProcess())
		ctx := context.Background()
		for b.Loop() {
			if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("traced", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
		telemetry.Install(tp)
		b.Cleanup(func() { telemetry.Install(noop.NewTracerProvider()); _ = tp.Shutdown(context.Background()) })
		s := grpcx.NewServer(zap.NewNop(), verifier)
		run(b, s.Server, s.Health)
	})
}
