package gateway

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	auditv1 "github.com/clinicchat/clinicchat/proto/clinicchat/audit/v1"
	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// callRecord is what a service saw of a call: its incoming metadata, its
// span context and its request.
type callRecord struct {
	md   metadata.MD
	span trace.SpanContext
	req  string
}

// recordingServices answer a send and a markRead, recording each call.
type recordingServices struct {
	deliveryv1.UnimplementedDeliveryServiceServer
	conversationv1.UnimplementedConversationServiceServer
	calls chan callRecord
}

func (s *recordingServices) record(ctx context.Context, req interface{ String() string }) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.calls <- callRecord{md: md, span: trace.SpanContextFromContext(ctx), req: req.String()}
}

func (s *recordingServices) CreateMessage(ctx context.Context, req *deliveryv1.CreateMessageRequest) (*deliveryv1.Message, error) {
	s.record(ctx, req)
	return &deliveryv1.Message{Name: req.GetParent() + "/messages/m1", Text: req.GetText(), RequestId: req.GetRequestId(),
		Status: deliveryv1.Message_SENT, CreateTime: timestamppb.Now()}, nil
}

func (s *recordingServices) MarkConversationRead(ctx context.Context, req *conversationv1.MarkConversationReadRequest) (*conversationv1.Conversation, error) {
	s.record(ctx, req)
	return &conversationv1.Conversation{Name: req.GetName(), State: conversationv1.Conversation_ACTIVE}, nil
}

// TestHotPathForwardsTheSameCall: with tracing on, a send and a markRead
// reach the service (in process, as in the all-in-one) with the same
// request, the same metadata — the token, X-Request-Id headers, and
// x-forwarded-host and x-forwarded-for as grpc-gateway derives them — and
// in the gateway's trace, whether hotpath.go or the generated handler serves
// them.
func TestHotPathForwardsTheSameCall(t *testing.T) {
	ended := endedSpans(make(chan sdktrace.ReadOnlySpan, 256))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(ended))
	telemetry.Install(tp)
	t.Cleanup(func() { telemetry.Install(noop.NewTracerProvider()) })

	log := testkit.Logger(t)
	_, _, js := testkit.NATS(t)
	tokens, verifier := testkit.NewTokens()
	rec := &recordingServices{calls: make(chan callRecord, 1)}
	gs := grpcx.NewServer(log, verifier)
	deliveryv1.RegisterDeliveryServiceServer(gs, rec)
	conversationv1.RegisterConversationServiceServer(gs, rec)
	attachmentv1.RegisterAttachmentServiceServer(gs, attachmentv1.UnimplementedAttachmentServiceServer{})
	preferencesv1.RegisterPreferencesServiceServer(gs, preferencesv1.UnimplementedPreferencesServiceServer{})
	auditv1.RegisterAuditServiceServer(gs, auditv1.UnimplementedAuditServiceServer{})
	cc := gs.InProcess()
	gw, err := New(Config{}, Deps{Log: log, Verifier: verifier, JS: js,
		Conversation: cc, Delivery: cc, Preferences: cc, Attachment: cc, Audit: cc})
	require.NoError(t, err)
	t.Cleanup(func() { _ = gw.Shutdown(context.Background()) })
	srv := httptest.NewServer(gw.Handler())
	t.Cleanup(srv.Close)
	tok := tokens.Token(t, "dentist1", "dentist", "practice1", 0)

	type outcome struct {
		md        metadata.MD
		req       string
		spanNames []string
	}
	call := func(hot bool, path, body string, header http.Header) outcome {
		t.Helper()
		gw.noHotPath.Store(!hot)
		defer gw.noHotPath.Store(false)
		req, err := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header = header.Clone()
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+tok)
		r := httptest.NewRequest(http.MethodPost, path, nil)
		r.Header = req.Header
		_, served := hotRoute(r)
		require.True(t, served)
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, http.StatusOK, resp.StatusCode)
		got := <-rec.calls
		require.True(t, got.span.IsValid(), "the service's call is traced")
		// The gateway's span (the trace's root) ends once the answer is
		// written: wait for it; the trace's other spans ended before.
		var names []string
		for {
			sp := <-ended
			if sp.SpanContext().TraceID() != got.span.TraceID() {
				continue
			}
			names = append(names, sp.Name())
			if !sp.Parent().IsValid() {
				break
			}
		}
		sort.Strings(names)
		// The trace context propagated to the service (its own per trace).
		tp := got.md["traceparent"]
		require.Len(t, tp, 1)
		require.Contains(t, tp[0], got.span.TraceID().String())
		delete(got.md, "traceparent")
		return outcome{md: got.md, req: got.req, spanNames: names}
	}

	headers := []http.Header{
		{},
		{"X-Request-Id": {"rid-1", "rid-\u00e9", "rid-2"}, "X-Forwarded-For": {"203.0.113.9", "198.51.100.1"},
			"X-Forwarded-Host": {"portal.example"}, "Grpc-Metadata-Evil": {"x"}, "X-Other": {"y"}},
		{"X-Forwarded-For": {"bad\u00e9"}, "X-Forwarded-Host": {"bad\u00e9"}},
	}
	for _, c := range []struct{ path, body string }{
		{"/v1/conversations/c1/messages", `{"text":"hi","requestId":"r1"}`},
		{"/v1/conversations/c1:markRead", `{"upTo":"conversations/c1/messages/m1"}`},
	} {
		for i, h := range headers {
			gen := call(false, c.path, c.body, h)
			hot := call(true, c.path, c.body, h)
			require.Equal(t, gen, hot, "%s, headers %d", c.path, i)
			require.Equal(t, []string{"Bearer " + tok}, hot.md["authorization"])
		}
	}
}

// A markRead's body is read into a lent buffer: decoding it allocates less
// than apiDecoder, which makes a buffer per request.
func TestDecodeHotBodyLendsItsBuffer(t *testing.T) {
	s := &Server{marshaler: newMarshaler()}
	body := []byte(`{"upTo":"conversations/c1/messages/m1"}`)
	var rd bytes.Reader
	var req conversationv1.MarkConversationReadRequest
	allocs := testing.AllocsPerRun(200, func() {
		rd.Reset(body)
		if err := decodeHotBody(s, &rd, &req); err != nil {
			t.Fatal(err)
		}
	})
	require.Equal(t, "conversations/c1/messages/m1", req.GetUpTo())
	own := testing.AllocsPerRun(200, func() {
		rd.Reset(body)
		d := apiDecoder{r: &rd, jsonpb: s.marshaler}
		if err := d.Decode(&req); err != nil {
			t.Fatal(err)
		}
	})
	require.Less(t, allocs, own, "the mux's decoder allocates its buffer")
	// What it decoded is its own: the buffer's next use changes nothing.
	rd.Reset([]byte(`{"upTo":"conversations/c2/messages/xx"}`))
	var other conversationv1.MarkConversationReadRequest
	require.NoError(t, decodeHotBody(s, &rd, &other))
	require.Equal(t, "conversations/c1/messages/m1", req.GetUpTo())
}
