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

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/ratelimit"
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

// benchDelivery answers CreateMessage with a message naming the caller.
type benchDelivery struct {
	deliveryv1.UnimplementedDeliveryServiceServer
}

func (benchDelivery) CreateMessage(ctx context.Context, req *deliveryv1.CreateMessageRequest) (*deliveryv1.Message, error) {
	who, _ := auth.FromContext(ctx)
	return &deliveryv1.Message{Name: req.GetParent() + "/messages/1", Sender: who.Principal(), Text: req.GetText()}, nil
}

// BenchmarkSendHop is a send's hop into the delivery service without the
// service's work: CreateMessage with a bearer token (verified once, then
// from the cache), the per-identity send limit and the metrics, "inprocess"
// through Server.InProcess (the gateway's hop in the all-in-one), "grpc"
// over bufconn (a practice system's call on --grpc-addr); "inprocess"'s
// context never ends, "inprocess-cancelable"'s can.
//
//	go test ./services/platform/grpcx -run XXX -bench SendHop -benchmem -count 5
func BenchmarkSendHop(b *testing.B) {
	tokens, verifier := testkit.NewTokens()
	server := func() *grpcx.Server {
		limits := ratelimit.NewInterceptors(ratelimit.Config{SendsPerSecond: 1e9, SendBurst: 1e9}, nil)
		s := grpcx.NewServer(zap.NewNop(), verifier, grpcx.Intercept(limits.Unary, limits.Stream))
		deliveryv1.RegisterDeliveryServiceServer(s, benchDelivery{})
		return s
	}
	ctx := auth.WithIdentity(context.Background(), tokens.Identity(b, "u1", auth.RoleDentist, "demo"))
	req := &deliveryv1.CreateMessageRequest{Parent: "conversations/c1", Text: "hello", RequestId: "r1"}
	send := func(b *testing.B, client deliveryv1.DeliveryServiceClient, ctx context.Context) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := client.CreateMessage(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("inprocess", func(b *testing.B) {
		send(b, deliveryv1.NewDeliveryServiceClient(server().InProcess()), ctx)
	})
	// A caller whose context can end (a request's, a handler's): the call
	// waits on a channel and the caller's cancellation together.
	b.Run("inprocess-cancelable", func(b *testing.B) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		send(b, deliveryv1.NewDeliveryServiceClient(server().InProcess()), ctx)
	})
	b.Run("grpc", func(b *testing.B) {
		s := server()
		lis := bufconn.Listen(1 << 20)
		go func() { _ = s.Serve(lis) }()
		b.Cleanup(s.Stop)
		cc, err := grpcx.DialListener(lis.DialContext)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = cc.Close() })
		send(b, deliveryv1.NewDeliveryServiceClient(cc), auth.Outgoing(ctx))
	})
}
