package grpcx_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/ratelimit"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// fakeDelivery is a hand-written DeliveryService: CreateMessage answers
// with the caller's identity as the server saw it, and behaves by the text.
type fakeDelivery struct {
	deliveryv1.UnimplementedDeliveryServiceServer
	deadlines chan time.Time // the handler's deadline, per call
	started   chan struct{}  // "block": the handler runs
	ended     chan error     // "block": the handler's context error
	kept      *deliveryv1.Message
}

func (f *fakeDelivery) CreateMessage(ctx context.Context, req *deliveryv1.CreateMessageRequest) (*deliveryv1.Message, error) {
	who, _ := auth.FromContext(ctx)
	if d, ok := ctx.Deadline(); ok {
		f.deadlines <- d
	}
	switch req.GetText() {
	case "opted out":
		return nil, errs.FailedPrecondition(errs.ReasonChatOptedOut, "The patient has opted out of chat")
	case "panic":
		panic("boom")
	case "block":
		close(f.started)
		<-ctx.Done()
		f.ended <- ctx.Err()
		return nil, ctx.Err()
	}
	req.Text = "changed by the handler" // the caller's request is its own
	md, _ := metadata.FromIncomingContext(ctx)
	f.kept = &deliveryv1.Message{Name: req.GetParent() + "/messages/1", Sender: who.Principal(), Text: md.Get("x-probe")[0]}
	return f.kept, nil
}

// fakeAttachments is a hand-written AttachmentService: an upload counts its
// bytes, a download sends n chunks of the name's length.
type fakeAttachments struct {
	attachmentv1.UnimplementedAttachmentServiceServer
}

func (fakeAttachments) UploadAttachment(stream grpc.ClientStreamingServer[attachmentv1.UploadAttachmentRequest, attachmentv1.Attachment]) error {
	n := 0
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&attachmentv1.Attachment{Name: "attachments/a", SizeBytes: int32(n)})
		}
		if err != nil {
			return err
		}
		n += len(req.GetChunk())
	}
}

func (fakeAttachments) DownloadAttachment(req *attachmentv1.DownloadAttachmentRequest, stream grpc.ServerStreamingServer[attachmentv1.DownloadAttachmentResponse]) error {
	if err := stream.SendHeader(metadata.Pairs("x-header", "h")); err != nil {
		return err
	}
	stream.SetTrailer(metadata.Pairs("x-trailer", "t"))
	for i := range 3 {
		if err := stream.Send(&attachmentv1.DownloadAttachmentResponse{Frame: &attachmentv1.DownloadAttachmentResponse_Chunk{Chunk: []byte{byte(i)}}}); err != nil {
			return err
		}
	}
	return errs.NotFound("gone after three chunks")
}

type inprocEnv struct {
	srv      *grpcx.Server
	conn     grpc.ClientConnInterface
	delivery *fakeDelivery
	tokens   *testkit.Tokens
	reg      *prometheus.Registry
}

func newInprocEnv(t *testing.T, limits ratelimit.Config) *inprocEnv {
	t.Helper()
	tokens, verifier := testkit.NewTokens()
	m := ratelimit.NewMetrics()
	rl := ratelimit.NewInterceptors(limits, m)
	srv := grpcx.NewServer(testkit.Logger(t), verifier, grpcx.Intercept(rl.Unary, rl.Stream))
	d := &fakeDelivery{deadlines: make(chan time.Time, 100), started: make(chan struct{}), ended: make(chan error, 1)}
	deliveryv1.RegisterDeliveryServiceServer(srv, d)
	attachmentv1.RegisterAttachmentServiceServer(srv, fakeAttachments{})
	srv.InitMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(srv.Metrics, m)
	return &inprocEnv{srv: srv, conn: srv.InProcess(), delivery: d, tokens: tokens, reg: reg}
}

// as is a context whose identity (with its token) the channel forwards.
func (e *inprocEnv) as(t *testing.T, subject string) context.Context {
	return auth.WithIdentity(metadata.AppendToOutgoingContext(t.Context(), "x-probe", "probe"),
		e.tokens.Identity(t, subject, "dentist", "p1"))
}

func (e *inprocEnv) counter(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := e.reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func reason(t *testing.T, err error) string {
	t.Helper()
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// An in-process call runs what a network call runs: the token of the
// caller's identity is forwarded and verified, the rate limit counts per
// identity, the Prometheus metrics count it, typed errors arrive as their
// status with the reason in the details, a panic is INTERNAL, the deadline
// reaches the handler, and messages are copies.
func TestInProcessCallRunsTheServerChain(t *testing.T) {
	e := newInprocEnv(t, ratelimit.Config{SendsPerSecond: 0.001, SendBurst: 3})
	client := deliveryv1.NewDeliveryServiceClient(e.conn)
	method := map[string]string{"grpc_service": "clinicchat.delivery.v1.DeliveryService", "grpc_method": "CreateMessage"}
	handled := func(code string) float64 {
		return e.counter(t, "grpc_server_handled_total", map[string]string{"grpc_method": "CreateMessage", "grpc_code": code})
	}

	// No identity, no token: authentication refuses it.
	_, err := client.CreateMessage(t.Context(), &deliveryv1.CreateMessageRequest{Parent: "conversations/c"})
	require.Equal(t, codes.Unauthenticated, status.Code(err))
	require.Equal(t, errs.ReasonUnauthenticated, reason(t, err))

	// With one: the handler sees the verified identity and the caller's
	// metadata, the caller's request is not changed, the deadline arrives.
	ctx, cancel := context.WithTimeout(e.as(t, "lee"), time.Minute)
	defer cancel()
	deadline, _ := ctx.Deadline()
	req := &deliveryv1.CreateMessageRequest{Parent: "conversations/c", Text: "hello"}
	msg, err := client.CreateMessage(ctx, req)
	require.NoError(t, err)
	require.Equal(t, "users/lee", msg.GetSender())
	require.Equal(t, "probe", msg.GetText())
	require.Equal(t, "hello", req.GetText(), "the handler changed its own copy")
	require.WithinDuration(t, deadline, <-e.delivery.deadlines, 0)
	msg.Name = "changed by the caller"
	require.Equal(t, "conversations/c/messages/1", e.delivery.kept.GetName(), "the caller changed its own copy")

	// A typed error keeps its code and reason; a panic is INTERNAL.
	_, err = client.CreateMessage(ctx, &deliveryv1.CreateMessageRequest{Parent: "conversations/c", Text: "opted out"})
	require.Equal(t, codes.FailedPrecondition, status.Code(err))
	require.Equal(t, errs.ReasonChatOptedOut, reason(t, err))
	<-e.delivery.deadlines

	// The burst of 3 is spent (the panic is the third): lee is limited,
	// another identity is not.
	_, err = client.CreateMessage(ctx, &deliveryv1.CreateMessageRequest{Parent: "conversations/c", Text: "panic"})
	require.Equal(t, codes.Internal, status.Code(err))
	require.Contains(t, status.Convert(err).Message(), "error id")
	<-e.delivery.deadlines
	_, err = client.CreateMessage(ctx, &deliveryv1.CreateMessageRequest{Parent: "conversations/c", Text: "hello"})
	require.Equal(t, codes.ResourceExhausted, status.Code(err))
	require.Equal(t, errs.ReasonResourceExhausted, reason(t, err))
	_, err = client.CreateMessage(e.as(t, "kim"), &deliveryv1.CreateMessageRequest{Parent: "conversations/c", Text: "hello"})
	require.NoError(t, err)

	// Every call was counted by the server metrics, by the code the caller saw.
	require.Equal(t, 1.0, handled("Unauthenticated"))
	require.Equal(t, 2.0, handled("OK"))
	require.Equal(t, 1.0, handled("FailedPrecondition"))
	require.Equal(t, 1.0, handled("Internal"))
	require.Equal(t, 1.0, handled("ResourceExhausted"))
	require.Equal(t, 6.0, e.counter(t, "grpc_server_started_total", method))
	require.Equal(t, 1.0, e.counter(t, "clinicchat_limit_refusals_total", nil))
}

// Cancelling the caller's context cancels the handler's, and the caller gets
// CANCELED at once; a deadline that passes is DEADLINE_EXCEEDED, and a call
// whose deadline has already passed never reaches the handler (started
// anyway, a quick handler answered OK about once in a few hundred runs
// under -race).
func TestInProcessCancellationAndDeadline(t *testing.T) {
	e := newInprocEnv(t, ratelimit.Config{})
	client := deliveryv1.NewDeliveryServiceClient(e.conn)
	ctx, cancel := context.WithCancel(e.as(t, "lee"))
	go func() { <-e.delivery.started; cancel() }()
	_, err := client.CreateMessage(ctx, &deliveryv1.CreateMessageRequest{Parent: "conversations/c", Text: "block"})
	require.Equal(t, codes.Canceled, status.Code(err))
	require.ErrorIs(t, <-e.delivery.ended, context.Canceled)

	ctx, cancel = context.WithTimeout(e.as(t, "lee"), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	_, err = client.CreateMessage(ctx, &deliveryv1.CreateMessageRequest{Parent: "conversations/c"})
	require.Equal(t, codes.DeadlineExceeded, status.Code(err))
	require.Empty(t, e.delivery.deadlines, "the handler did not run")
	_, err = client.CreateMessage(ctx, &deliveryv1.CreateMessageRequest{Parent: "conversations/c", Text: "block"})
	require.Equal(t, codes.DeadlineExceeded, status.Code(err))
}

// Streams both ways: an upload's bytes count against the caller's upload
// limit, a download's messages, header, trailer and final status arrive.
func TestInProcessStreams(t *testing.T) {
	e := newInprocEnv(t, ratelimit.Config{UploadBytesPerMinute: 100})
	client := attachmentv1.NewAttachmentServiceClient(e.conn)
	upload := func(ctx context.Context, chunks ...int) (*attachmentv1.Attachment, error) {
		up, err := client.UploadAttachment(ctx)
		require.NoError(t, err)
		for _, n := range chunks {
			if err := up.Send(&attachmentv1.UploadAttachmentRequest{Frame: &attachmentv1.UploadAttachmentRequest_Chunk{Chunk: make([]byte, n)}}); err != nil {
				break // the status is CloseAndRecv's
			}
		}
		return up.CloseAndRecv()
	}
	att, err := upload(e.as(t, "lee"), 30, 30)
	require.NoError(t, err)
	require.EqualValues(t, 60, att.GetSizeBytes())
	_, err = upload(e.as(t, "lee"), 30, 30)
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "past 100 bytes a minute")
	_, err = upload(e.as(t, "kim"), 30)
	require.NoError(t, err, "another identity has its own budget")
	// The handler ends at the first chunk over the limit while the caller
	// still sends: the caller's sends end and it gets the status.
	_, err = upload(e.as(t, "ann"), 40, 40, 40, 40, 40, 40, 40, 40)
	require.Equal(t, codes.ResourceExhausted, status.Code(err))
	_, err = upload(t.Context(), 1)
	require.Equal(t, codes.Unauthenticated, status.Code(err))

	var header, trailer metadata.MD
	down, err := client.DownloadAttachment(e.as(t, "lee"), &attachmentv1.DownloadAttachmentRequest{Name: "attachments/a"},
		grpc.Header(&header), grpc.Trailer(&trailer))
	require.NoError(t, err)
	var got []byte
	for {
		resp, err := down.Recv()
		if err != nil {
			require.Equal(t, codes.NotFound, status.Code(err))
			require.Equal(t, errs.ReasonNotFound, reason(t, err))
			break
		}
		got = append(got, resp.GetChunk()...)
	}
	require.Equal(t, []byte{0, 1, 2}, got)
	require.Equal(t, []string{"h"}, header.Get("x-header"))
	require.Equal(t, []string{"t"}, trailer.Get("x-trailer"))
	require.Equal(t, 1.0, e.counter(t, "grpc_server_handled_total",
		map[string]string{"grpc_method": "DownloadAttachment", "grpc_code": "NotFound"}))
}

// Once stopped, the channel refuses calls as a stopped server does.
func TestInProcessStop(t *testing.T) {
	e := newInprocEnv(t, ratelimit.Config{})
	e.srv.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	health := healthpb.NewHealthClient(e.conn)
	_, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	require.True(t, e.srv.StopInProcess(time.Second))
	_, err = health.Check(t.Context(), &healthpb.HealthCheckRequest{})
	require.Equal(t, codes.Unavailable, status.Code(err))
}

// With tracing on, an in-process hop is a client span and its server span's
// parent, as over the network.
func TestInProcessIsTraced(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	telemetry.Install(tp)
	t.Cleanup(func() { telemetry.Install(noop.NewTracerProvider()); _ = tp.Shutdown(context.Background()) })
	e := newInprocEnv(t, ratelimit.Config{})
	ctx, span := telemetry.Tracer().Start(e.as(t, "lee"), "caller")
	_, err := deliveryv1.NewDeliveryServiceClient(e.conn).CreateMessage(ctx, &deliveryv1.CreateMessageRequest{Parent: "conversations/c"})
	require.NoError(t, err)
	span.End()
	byKind := map[trace.SpanKind]tracetest.SpanStub{}
	for _, s := range exp.GetSpans() {
		if s.Name == "clinicchat.delivery.v1.DeliveryService/CreateMessage" {
			byKind[s.SpanKind] = s
		}
	}
	require.Len(t, byKind, 2)
	client, server := byKind[trace.SpanKindClient], byKind[trace.SpanKindServer]
	require.Equal(t, span.SpanContext().SpanID(), client.Parent.SpanID())
	require.Equal(t, client.SpanContext.SpanID(), server.Parent.SpanID())
	require.Equal(t, client.SpanContext.TraceID(), server.SpanContext.TraceID())
}

// A call whose context can never end (no cancellation, no deadline) takes
// the path without a channel: the handler still gets the forwarded token
// and the caller's metadata, and caller and handler still change only their
// own copies of the request and the answer. A token already in the
// outgoing metadata is the one forwarded, as auth.ForwardUnary does.
func TestInProcessCallWithoutCancellation(t *testing.T) {
	e := newInprocEnv(t, ratelimit.Config{})
	client := deliveryv1.NewDeliveryServiceClient(e.conn)
	lee := e.tokens.Identity(t, "lee", "dentist", "p1")
	ctx := auth.WithIdentity(metadata.AppendToOutgoingContext(context.Background(), "x-probe", "probe"), lee)
	require.Nil(t, ctx.Done())

	req := &deliveryv1.CreateMessageRequest{Parent: "conversations/c", Text: "hello"}
	var header, trailer metadata.MD
	msg, err := client.CreateMessage(ctx, req, grpc.Header(&header), grpc.Trailer(&trailer))
	require.NoError(t, err)
	require.Equal(t, "users/lee", msg.GetSender())
	require.Equal(t, "probe", msg.GetText())
	require.Equal(t, "hello", req.GetText(), "the handler changed its own copy")
	msg.Name = "changed by the caller"
	require.Equal(t, "conversations/c/messages/1", e.delivery.kept.GetName(), "the caller changed its own copy")
	e.delivery.kept.Text = "changed by the handler afterwards"
	require.Equal(t, "probe", msg.GetText())

	// kim's token in the outgoing metadata wins over lee's identity.
	kim := e.tokens.Identity(t, "kim", "dentist", "p1")
	ctx = auth.WithIdentity(metadata.AppendToOutgoingContext(context.Background(),
		"x-probe", "probe", auth.MetadataKey, "Bearer "+kim.Token), lee)
	msg, err = client.CreateMessage(ctx, req)
	require.NoError(t, err)
	require.Equal(t, "users/kim", msg.GetSender())

	// No identity and no token: refused, as before.
	_, err = client.CreateMessage(context.Background(), req)
	require.Equal(t, codes.Unauthenticated, status.Code(err))
}
