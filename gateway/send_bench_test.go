package gateway

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
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

// sendDelivery answers CreateMessage as the delivery service does, with no
// storage behind it: what is left is the edge's own cost of a send.
type sendDelivery struct {
	deliveryv1.UnimplementedDeliveryServiceServer
	seq atomic.Int32
}

func (f *sendDelivery) CreateMessage(ctx context.Context, req *deliveryv1.CreateMessageRequest) (*deliveryv1.Message, error) {
	id, _ := auth.FromContext(ctx)
	n := f.seq.Add(1)
	return &deliveryv1.Message{
		Name: req.GetParent() + "/messages/" + strconv.Itoa(int(n)), Sender: "users/" + id.Subject,
		SenderRole: id.Role, SenderDisplayName: "Dr Bench", Text: req.GetText(), Sensitive: req.GetSensitive(),
		Status: deliveryv1.Message_SENT, CreateTime: timestamppb.Now(), RequestId: req.GetRequestId(), Seq: n,
	}, nil
}

// readConversation answers MarkConversationRead as the conversation service
// does, with no storage behind it.
type readConversation struct {
	conversationv1.UnimplementedConversationServiceServer
}

func (readConversation) MarkConversationRead(_ context.Context, req *conversationv1.MarkConversationReadRequest) (*conversationv1.Conversation, error) {
	return &conversationv1.Conversation{Name: req.GetName(), Patient: "patients/p1", PatientDisplayName: "Pat Bench",
		State: conversationv1.Conversation_ACTIVE, CreateTime: timestamppb.Now(), LastMessageSeq: 42,
		LastMessagePreview: "Your crown is ready", LastMessageTime: timestamppb.Now()}, nil
}

// sendBench is a gateway on a grpcx server reached in process (as in the
// all-in-one), the same server on a loopback TCP port for the gRPC path,
// and a staff token.
type sendBench struct {
	gw       *Server
	token    string
	grpcAddr string
}

func newSendBench(b testing.TB) *sendBench {
	b.Helper()
	log := testkit.Logger(b)
	_, _, js := testkit.NATS(b)
	tokens, verifier := testkit.NewTokens()
	gs := grpcx.NewServer(log, verifier)
	deliveryv1.RegisterDeliveryServiceServer(gs, &sendDelivery{})
	conversationv1.RegisterConversationServiceServer(gs, readConversation{})
	attachmentv1.RegisterAttachmentServiceServer(gs, attachmentv1.UnimplementedAttachmentServiceServer{})
	preferencesv1.RegisterPreferencesServiceServer(gs, preferencesv1.UnimplementedPreferencesServiceServer{})
	auditv1.RegisterAuditServiceServer(gs, auditv1.UnimplementedAuditServiceServer{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()
	b.Cleanup(func() { gs.Stop(); <-served })
	cc := gs.InProcess()
	gw, err := New(Config{}, Deps{Log: log, Verifier: verifier, JS: js,
		Conversation: cc, Delivery: cc, Preferences: cc, Attachment: cc, Audit: cc})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = gw.Shutdown(context.Background()) })
	return &sendBench{gw: gw, token: tokens.Token(b, "dentist1", "dentist", "practice1", 0), grpcAddr: lis.Addr().String()}
}

// sendBody is a send as the web client and clinicchat bench make it.
func sendBody(i int) []byte {
	return fmt.Appendf(nil, `{"text":"Your crown is ready for fitting; see you on Tuesday at 10:00 (message %d)","requestId":"req-%d"}`, i, i)
}

const sendPath = "/v1/conversations/c1/messages"

// BenchmarkSendEdge is one send's cost at the edge with a delivery service
// that does nothing: handler (the gateway's http.Handler alone: routing,
// token check, JSON decode, the in-process hop, JSON encode), http (the
// same over a loopback HTTP/1.1 connection, client included) and grpc (the
// gRPC server over loopback TCP, client included).
//
//	go test ./gateway -run '^$' -bench SendEdge -benchmem
func BenchmarkSendEdge(b *testing.B) {
	sb := newSendBench(b)
	b.Run("handler", func(b *testing.B) {
		sb.serveEach(b, func(i int) (string, []byte) { return sendPath, sendBody(i) })
	})
	b.Run("handler-generated", func(b *testing.B) { // grpc-gateway's generated handler (no hotpath.go)
		sb.gw.noHotPath.Store(true)
		defer sb.gw.noHotPath.Store(false)
		sb.serveEach(b, func(i int) (string, []byte) { return sendPath, sendBody(i) })
	})
	b.Run("http", func(b *testing.B) {
		srv := httptest.NewServer(sb.gw.Handler())
		defer srv.Close()
		client := srv.Client()
		b.ReportAllocs()
		for i := range b.N {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+sendPath, bytes.NewReader(sendBody(i)))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+sb.token)
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	})
	b.Run("grpc", func(b *testing.B) {
		conn, err := grpc.NewClient(sb.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		client := deliveryv1.NewDeliveryServiceClient(conn)
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+sb.token)
		b.ReportAllocs()
		for i := range b.N {
			_, err := client.CreateMessage(ctx, &deliveryv1.CreateMessageRequest{Parent: "conversations/c1",
				Text:      "Your crown is ready for fitting; see you on Tuesday at 10:00 (message " + strconv.Itoa(i) + ")",
				RequestId: "req-" + strconv.Itoa(i)})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkMarkReadEdge is one markRead's cost at the edge with a
// conversation service that does nothing (the gateway's http.Handler
// alone): hot (hotpath.go) and generated (grpc-gateway's generated handler).
//
//	go test ./gateway -run '^$' -bench MarkReadEdge -benchmem
func BenchmarkMarkReadEdge(b *testing.B) {
	sb := newSendBench(b)
	req := func(i int) (string, []byte) {
		return "/v1/conversations/c1:markRead", fmt.Appendf(nil, `{"upTo":"conversations/c1/messages/m%d"}`, i)
	}
	b.Run("hot", func(b *testing.B) { sb.serveEach(b, req) })
	b.Run("generated", func(b *testing.B) {
		sb.gw.noHotPath.Store(true)
		defer sb.gw.noHotPath.Store(false)
		sb.serveEach(b, req)
	})
}

// serveEach POSTs b.N requests, the ith one's path and JSON body from req,
// to the gateway's http.Handler, each expected to answer 200.
func (sb *sendBench) serveEach(b *testing.B, req func(i int) (path string, body []byte)) {
	h := sb.gw.Handler()
	b.ReportAllocs()
	for i := range b.N {
		path, body := req(i)
		r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Authorization", "Bearer "+sb.token)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	}
}
