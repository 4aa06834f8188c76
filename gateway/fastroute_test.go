package gateway

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	auditv1 "github.com/clinicchat/clinicchat/proto/clinicchat/audit/v1"
	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// mdCapture is a delivery and conversation service that records the
// incoming metadata of each CreateMessage and MarkConversationRead and
// answers from the request (an error when the text or upTo asks for one).
type mdCapture struct {
	deliveryv1.UnimplementedDeliveryServiceServer
	conversationv1.UnimplementedConversationServiceServer
	mu   sync.Mutex
	last metadata.MD
	req  string
}

func (c *mdCapture) record(ctx context.Context, req string) {
	md, _ := metadata.FromIncomingContext(ctx)
	c.mu.Lock()
	c.last, c.req = md.Copy(), req
	c.mu.Unlock()
}

func (c *mdCapture) take() (metadata.MD, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	md, req := c.last, c.req
	c.last, c.req = nil, ""
	return md, req
}

func captureError(what string) error {
	st, _ := status.New(codes.FailedPrecondition, "Refused: "+what).WithDetails(&errdetails.ErrorInfo{
		Reason: "PATIENT_OPTED_OUT", Domain: "clinicchat.app"})
	return st.Err()
}

func (c *mdCapture) CreateMessage(ctx context.Context, req *deliveryv1.CreateMessageRequest) (*deliveryv1.Message, error) {
	c.record(ctx, req.String())
	if strings.HasPrefix(req.GetText(), "fail") {
		return nil, captureError(req.GetText())
	}
	id, _ := auth.FromContext(ctx)
	return &deliveryv1.Message{Name: req.GetParent() + "/messages/m1", Sender: "users/" + id.Subject, SenderRole: id.Role,
		Text: req.GetText(), Sensitive: req.GetSensitive(), Status: deliveryv1.Message_SENT,
		CreateTime: timestamppb.New(timestamppb.Now().AsTime().Truncate(1e9)), RequestId: req.GetRequestId(), Seq: 7}, nil
}

func (c *mdCapture) MarkConversationRead(ctx context.Context, req *conversationv1.MarkConversationReadRequest) (*conversationv1.Conversation, error) {
	c.record(ctx, req.String())
	if strings.HasSuffix(req.GetUpTo(), "fail") {
		return nil, captureError(req.GetUpTo())
	}
	return &conversationv1.Conversation{Name: req.GetName(), Patient: "patients/p1", State: conversationv1.Conversation_ACTIVE,
		LastMessageSeq: 42, LastMessagePreview: "Your crown is ready"}, nil
}

// TestFastRoutesAreGrpcGateways sends the same requests to a gateway with
// the send and markRead fast routes and to one with grpc-gateway's
// generated handlers, on the same services: the metadata the service
// receives, the request it decodes, the answer's status, headers and body
// are the same, for everyday requests, every header annotate reads (valid,
// invalid, repeated), and refused bodies and calls.
func TestFastRoutesAreGrpcGateways(t *testing.T) {
	log := testkit.Logger(t)
	_, _, js := testkit.NATS(t)
	tokens, verifier := testkit.NewTokens()
	gs := grpcx.NewServer(log, verifier)
	svc := &mdCapture{}
	deliveryv1.RegisterDeliveryServiceServer(gs, svc)
	conversationv1.RegisterConversationServiceServer(gs, svc)
	attachmentv1.RegisterAttachmentServiceServer(gs, attachmentv1.UnimplementedAttachmentServiceServer{})
	preferencesv1.RegisterPreferencesServiceServer(gs, preferencesv1.UnimplementedPreferencesServiceServer{})
	auditv1.RegisterAuditServiceServer(gs, auditv1.UnimplementedAuditServiceServer{})
	cc := gs.InProcess()
	newGW := func(fast bool) *Server {
		gw, err := New(Config{}, Deps{Log: log, Verifier: verifier, JS: js,
			Conversation: cc, Delivery: cc, Preferences: cc, Attachment: cc, Audit: cc})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = gw.Shutdown(context.Background()) })
		if !fast {
			gw.noFastRoutes = true
			if err := gw.routes(); err != nil {
				t.Fatal(err)
			}
		}
		return gw
	}
	fast, gen := newGW(true), newGW(false)
	token := tokens.Token(t, "dentist1", "dentist", "practice1", 0)

	type tc struct {
		name, path, body string
		edit             func(r *http.Request)
	}
	send, read := "/v1/conversations/c1/messages", "/v1/conversations/c1:markRead"
	sendBody := `{"text":"Your crown is ready","requestId":"r1"}`
	readBody := `{"upTo":"conversations/c1/messages/m9"}`
	hdr := func(kv ...string) func(r *http.Request) {
		return func(r *http.Request) {
			for i := 0; i < len(kv); i += 2 {
				r.Header.Add(kv[i], kv[i+1])
			}
		}
	}
	cases := []tc{
		{name: "send", path: send, body: sendBody},
		{name: "markRead", path: read, body: readBody},
		{name: "markRead empty body", path: read, body: ""},
		{name: "markRead {}", path: read, body: "{}"},
		{name: "send escaped and sensitive", path: send, body: `{"text":"caf\u00e9 \"x\"","sensitive":true,"requestId":"r2"}`},
		{name: "send unknown field", path: send, body: `{"txt":"x"}`},
		{name: "send wrong type", path: send, body: `{"text":5}`},
		{name: "send not json", path: send, body: `text`},
		{name: "send parent in body", path: send, body: `{"parent":"conversations/c2","text":"hi"}`},
		{name: "markRead unknown field", path: read, body: `{"up":"x"}`},
		{name: "send refused by the service", path: send, body: `{"text":"fail please"}`},
		{name: "markRead refused by the service", path: read, body: `{"upTo":"conversations/c1/messages/fail"}`},
		{name: "request id", path: send, body: sendBody, edit: hdr("X-Request-Id", "req-123")},
		{name: "request ids", path: read, body: readBody, edit: hdr("X-Request-Id", "a", "X-Request-Id", "b\x01", "X-Request-Id", "c")},
		{name: "request id not ascii", path: send, body: sendBody, edit: hdr("X-Request-Id", "caf\u00e9")},
		{name: "forwarded for", path: send, body: sendBody, edit: hdr("X-Forwarded-For", "203.0.113.9")},
		{name: "forwarded for, several, one invalid", path: read, body: readBody,
			edit: hdr("X-Forwarded-For", "203.0.113.9, 198.51.100.2", "X-Forwarded-For", "bad\x7f", "X-Forwarded-For", "198.51.100.7")},
		{name: "forwarded host", path: send, body: sendBody, edit: hdr("X-Forwarded-Host", "chat.example.org")},
		{name: "forwarded host invalid", path: send, body: sendBody, edit: hdr("X-Forwarded-Host", "h\u00e9")},
		{name: "host invalid, remote addr without port", path: send, body: sendBody, edit: func(r *http.Request) {
			r.Host, r.RemoteAddr = "h\x01", "203.0.113.9"
		}},
		{name: "no host, ipv6 remote", path: read, body: readBody, edit: func(r *http.Request) {
			r.Host, r.RemoteAddr = "", "[2001:db8::1]:443"
		}},
		{name: "no host, no remote addr", path: read, body: readBody, edit: func(r *http.Request) { r.Host, r.RemoteAddr = "", "" }},
		{name: "two authorization headers", path: send, body: sendBody, edit: hdr("Authorization", "Bearer other")},
		{name: "metadata headers not forwarded", path: send, body: sendBody,
			edit: hdr("Grpc-Metadata-Foo", "1", "Grpc-Metadata-Authorization", "Bearer x", "User-Agent", "ua", "Accept", "*/*")},
		{name: "grpc-timeout", path: send, body: sendBody, edit: hdr("Grpc-Timeout", "5S")},
		{name: "grpc-timeout invalid", path: send, body: sendBody, edit: hdr("Grpc-Timeout", "soon")},
		{name: "te trailers", path: send, body: sendBody, edit: hdr("TE", "trailers")},
		{name: "content type text/plain", path: read, body: readBody, edit: func(r *http.Request) { r.Header.Set("Content-Type", "text/plain") }},
		{name: "no content type", path: send, body: sendBody, edit: func(r *http.Request) { r.Header.Del("Content-Type") }},
		{name: "escaped path", path: "/v1/conversations/c%201/messages", body: sendBody},
		{name: "long text", path: send, body: `{"text":"` + strings.Repeat("x", 5000) + `"}`},
	}
	do := func(gw *Server, c tc) (*httptest.ResponseRecorder, metadata.MD, string) {
		r := httptest.NewRequest(http.MethodPost, c.path, bytes.NewReader([]byte(c.body)))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Authorization", "Bearer "+token)
		if c.edit != nil {
			c.edit(r)
		}
		rec := httptest.NewRecorder()
		gw.Handler().ServeHTTP(rec, r)
		md, req := svc.take()
		return rec, md, req
	}
	reached := 0
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fr, fmd, freq := do(fast, c)
			gr, gmd, greq := do(gen, c)
			if fr.Code != gr.Code || !bytes.Equal(fr.Body.Bytes(), gr.Body.Bytes()) {
				t.Fatalf("answers differ:\nfast %d %s\ngen  %d %s", fr.Code, fr.Body, gr.Code, gr.Body)
			}
			if !reflect.DeepEqual(fr.Header(), gr.Header()) {
				t.Fatalf("headers differ:\nfast %v\ngen  %v", fr.Header(), gr.Header())
			}
			if !reflect.DeepEqual(fmd, gmd) || freq != greq {
				t.Fatalf("the service got different calls:\nfast %v %q\ngen  %v %q", fmd, freq, gmd, greq)
			}
			if gmd != nil {
				reached++
			}
			t.Logf("%d %s", fr.Code, fmd)
		})
	}
	if reached < 20 {
		t.Fatalf("only %d cases reached the service", reached)
	}
	// The fast gateway did serve them with its own routes: a send costs it
	// fewer allocations.
	allocs := func(gw *Server) float64 {
		return testing.AllocsPerRun(50, func() { do(gw, cases[0]) })
	}
	if f, g := allocs(fast), allocs(gen); f > g-5 {
		t.Fatalf("send: %.0f allocations with the fast route, %.0f without", f, g)
	}
}

// TestAnnotateIsAnnotateContext compares annotate with
// runtime.AnnotateContext directly: the outgoing metadata, the path
// pattern, the deadline and the error, on requests with every header
// annotate reads, random in number, order and validity.
func TestAnnotateIsAnnotateContext(t *testing.T) {
	s := &Server{}
	s.mux = runtime.NewServeMux(runtime.WithIncomingHeaderMatcher(incomingHeader))
	values := []string{"v", "", "a b", "caf\u00e9", "x\x00y", "203.0.113.9", "2001:db8::1", "~!@#", "Bearer t", "\x7f"}
	keys := []string{"Authorization", "X-Request-Id", "X-Forwarded-For", "X-Forwarded-Host", "Grpc-Metadata-X", "Accept",
		"Grpc-Timeout", "X-Request-Id-Bin"}
	hosts := []string{"", "example.com", "h\x01", "[::1]:8080"}
	addrs := []string{"", "192.0.2.1:1234", "192.0.2.1", "[2001:db8::1]:443", "bad\x01:1"}
	rnd := uint64(1)
	next := func(n int) int { rnd = rnd*6364136223846793005 + 1442695040888963407; return int(rnd>>33) % n }
	for i := range 3000 {
		r := httptest.NewRequest(http.MethodPost, routeSend, nil)
		r.Header = http.Header{}
		for range next(6) {
			k := keys[next(len(keys))]
			if k == "Grpc-Timeout" && next(3) > 0 {
				continue
			}
			r.Header[k] = append(r.Header[k], values[next(len(values))])
		}
		if next(4) == 0 {
			r.Header["Grpc-Timeout"] = []string{[]string{"1S", "10m", "bogus", "5"}[next(4)]}
		}
		r.Host, r.RemoteAddr = hosts[next(len(hosts))], addrs[next(len(addrs))]
		const rpc = "/clinicchat.delivery.v1.DeliveryService/CreateMessage"
		want, werr := runtime.AnnotateContext(context.Background(), s.mux, r, rpc, runtime.WithHTTPPathPattern(routeSend))
		got, gerr := s.annotate(context.Background(), r, rpc, routeSend)
		if (werr == nil) != (gerr == nil) || werr != nil && werr.Error() != gerr.Error() {
			t.Fatalf("case %d %v: errors differ: %v, %v", i, r.Header, werr, gerr)
		}
		if werr != nil {
			continue
		}
		wmd, wok := metadata.FromOutgoingContext(want)
		gmd, gok := metadata.FromOutgoingContext(got)
		if wok != gok || !reflect.DeepEqual(wmd, gmd) {
			t.Fatalf("case %d (headers %q, host %q, remote %q): metadata differ:\nwant %v\ngot  %v", i, r.Header, r.Host, r.RemoteAddr, wmd, gmd)
		}
		wp, _ := runtime.HTTPPathPattern(want)
		gp, _ := runtime.HTTPPathPattern(got)
		_, wdl := want.Deadline()
		_, gdl := got.Deadline()
		if wp != gp || wdl != gdl {
			t.Fatalf("case %d: pattern %q/%q, deadline %t/%t", i, wp, gp, wdl, gdl)
		}
	}
}
