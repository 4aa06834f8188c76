package gateway

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// spanRecorder answers GetConversation NOT_FOUND and keeps the span context
// the call arrived with.
type spanRecorder struct {
	conversationv1.UnimplementedConversationServiceServer
	got chan trace.SpanContext
}

func (r *spanRecorder) GetConversation(ctx context.Context, _ *conversationv1.GetConversationRequest) (*conversationv1.Conversation, error) {
	r.got <- trace.SpanContextFromContext(ctx)
	return nil, status.Error(codes.NotFound, "none")
}

// With tracing on, a call through the public gRPC edge is traced from the
// edge: the service's span is the child of the edge's, and a practice
// system's own traceparent is linked, never adopted as the parent.
func TestGRPCEdgeStartsTheTrace(t *testing.T) {
	ended := endedSpans(make(chan sdktrace.ReadOnlySpan, 64))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(ended))
	telemetry.Install(tp)
	t.Cleanup(func() { telemetry.Install(noop.NewTracerProvider()) })

	tokens, verifier := testkit.NewTokens()
	rec := &spanRecorder{got: make(chan trace.SpanContext, 1)}
	lis := bufconn.Listen(1 << 20)
	gs := grpcx.NewServer(testkit.Logger(t), verifier)
	conversationv1.RegisterConversationServiceServer(gs, rec)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	backend, err := grpcx.DialListener(lis.DialContext)
	require.NoError(t, err)
	t.Cleanup(func() { _ = backend.Close() })
	upstreams := map[string]grpc.ClientConnInterface{}
	for _, name := range UpstreamNames {
		upstreams[name] = backend
	}
	edge, err := NewGRPCEdge(upstreams)
	require.NoError(t, err)
	el, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = edge.Serve(el) }()
	t.Cleanup(func() { edge.Shutdown(time.Second) })
	cc, err := grpc.NewClient(el.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })

	const theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tokens.Token(t, "pms", "system", "north", 0),
		"traceparent", theirs)
	_, err = conversationv1.NewConversationServiceClient(cc).GetConversation(ctx, &conversationv1.GetConversationRequest{Name: "conversations/c"})
	require.Equal(t, codes.NotFound, status.Code(err))
	got := <-rec.got
	require.True(t, got.IsValid(), "the service's call is traced")
	require.NotEqual(t, "4bf92f3577b34da6a3ce929d0e0e4736", got.TraceID().String(), "the caller's trace is not adopted")

	// The edge's span ends after its answer is on the wire: wait for it.
	var edgeSpan sdktrace.ReadOnlySpan
	for edgeSpan == nil {
		select {
		case sp := <-ended:
			if sp.SpanKind() == trace.SpanKindServer && sp.SpanContext().TraceID() == got.TraceID() && !sp.Parent().IsValid() {
				edgeSpan = sp
			}
		case <-ctx.Done():
			t.Fatal("the edge's server span, the root, never ended")
		}
	}
	require.Len(t, edgeSpan.Links(), 1)
	require.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", edgeSpan.Links()[0].SpanContext.TraceID().String(), "linked to the caller's")
}

// endedSpans hands each span that ends to the test (a span processor).
type endedSpans chan sdktrace.ReadOnlySpan

func (e endedSpans) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (e endedSpans) OnEnd(s sdktrace.ReadOnlySpan)                   { e <- s }
func (e endedSpans) Shutdown(context.Context) error                  { return nil }
func (e endedSpans) ForceFlush(context.Context) error                { return nil }
