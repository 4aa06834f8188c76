package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	auditv1 "github.com/clinicchat/clinicchat/proto/clinicchat/audit/v1"
	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// waitFor bounds every wait on an event; tests wait on the event itself,
// this only turns a hang into a failure.
const waitFor = 10 * time.Second

// harness is the real gateway over real HTTP, with hand-written fake
// services behind a real gRPC server (bufconn, with clinicchat's auth
// interceptors, so the forwarded token is verified again) and a real
// embedded NATS server.
type harness struct {
	t      testing.TB
	gw     *Server
	ns     *server.Server
	srv    *httptest.Server
	js     jetstream.JetStream
	tokens *testkit.Tokens
	conv   *fakeConversation
	del    *fakeDelivery
	att    *fakeAttachment
	// overflowHook becomes Server.onOverflow before the server starts.
	overflowHook func()
	// httpServer, when set, adjusts the test HTTP server before it starts.
	httpServer func(*http.Server)
	// tls serves HTTPS (HTTP/2 too when http2); noHijack keeps event
	// streams on net/http.
	tls, http2, noHijack bool
	// noIdlePoll keeps idle taken-over streams waiting in a read (hijack.go).
	noIdlePoll bool
}

type harnessOption func(h *harness, c *Config, d *Deps)

func newHarness(t testing.TB, opts ...harnessOption) *harness {
	t.Helper()
	return newHarnessOn(t, nil, opts...)
}

// newHarnessOn is newHarness on from's NATS server and token issuer (nil:
// its own): a second gateway replica, or the same one after a restart.
func newHarnessOn(t testing.TB, from *harness, opts ...harnessOption) *harness {
	t.Helper()
	log := testkit.Logger(t)
	h := &harness{t: t, conv: newFakeConversation(), del: newFakeDelivery(), att: newFakeAttachment()}
	if from != nil {
		// Its own NATS connection, as another process would have.
		nc, err := nats.Connect(from.ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		require.NoError(t, err)
		t.Cleanup(nc.Close)
		h.ns, h.tokens = from.ns, from.tokens
		h.js, err = jetstream.New(nc)
		require.NoError(t, err)
	} else {
		h.ns, _, h.js = testkit.NATS(t)
		h.tokens, _ = testkit.NewTokens()
	}
	tokens := h.tokens
	verifier := auth.HMACVerifier{Key: tokens.Issuer.Key, Issuer: tokens.Issuer.Issuer}

	lis := bufconn.Listen(1 << 20)
	gs := grpcx.NewServer(log, verifier)
	conversationv1.RegisterConversationServiceServer(gs, h.conv)
	deliveryv1.RegisterDeliveryServiceServer(gs, h.del)
	attachmentv1.RegisterAttachmentServiceServer(gs, h.att)
	preferencesv1.RegisterPreferencesServiceServer(gs, preferencesv1.UnimplementedPreferencesServiceServer{})
	auditv1.RegisterAuditServiceServer(gs, auditv1.UnimplementedAuditServiceServer{})
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-served })
	cc, err := grpcx.DialListener(lis.DialContext)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })

	cfg := Config{}
	deps := Deps{Log: log, Verifier: verifier, JS: h.js,
		Conversation: cc, Delivery: cc, Preferences: cc, Attachment: cc, Audit: cc}
	for _, o := range opts {
		o(h, &cfg, &deps)
	}
	h.gw, err = New(cfg, deps)
	require.NoError(t, err)
	h.gw.onOverflow = h.overflowHook
	h.gw.noHijack = h.noHijack
	h.gw.noIdlePoll = h.noIdlePoll
	h.srv = httptest.NewUnstartedServer(h.gw.Handler())
	if h.httpServer != nil {
		h.httpServer(h.srv.Config)
	}
	if h.tls {
		h.srv.EnableHTTP2 = h.http2
		h.srv.StartTLS()
	} else {
		h.srv.Start()
	}
	t.Cleanup(h.srv.Close)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		require.NoError(t, h.gw.Shutdown(ctx))
	})
	return h
}

// token signs a token; authAge is how long ago the user signed in.
func (h *harness) token(subject, role, practice string, authAge time.Duration) string {
	return h.tokens.Token(h.t, subject, role, practice, authAge)
}

// do sends a request with an optional bearer token and JSON body.
func (h *harness) do(method, path, token string, body any) *http.Response {
	h.t.Helper()
	var rd io.Reader
	if body != nil {
		switch b := body.(type) {
		case string:
			rd = strings.NewReader(b)
		default:
			raw, err := json.Marshal(b)
			require.NoError(h.t, err)
			rd = bytes.NewReader(raw)
		}
	}
	req, err := http.NewRequest(method, h.srv.URL+path, rd)
	require.NoError(h.t, err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := h.srv.Client().Do(req)
	require.NoError(h.t, err)
	return resp
}

// apiStatus is a google.rpc.Status JSON body.
type apiStatus struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Details []struct {
		Type   string `json:"@type"`
		Reason string `json:"reason"`
		Domain string `json:"domain"`
	} `json:"details"`
}

// requireError checks an error response: HTTP code, JSON body, ErrorInfo.
func requireError(t *testing.T, resp *http.Response, httpCode int, reason string) apiStatus {
	t.Helper()
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, httpCode, resp.StatusCode, "body: %s", raw)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var st apiStatus
	require.NoError(t, json.Unmarshal(raw, &st), "body: %s", raw)
	require.NotEmpty(t, st.Message)
	require.Len(t, st.Details, 1, "body: %s", raw)
	require.Equal(t, "type.googleapis.com/google.rpc.ErrorInfo", st.Details[0].Type)
	require.Equal(t, reason, st.Details[0].Reason, "body: %s", raw)
	require.Equal(t, "clinicchat", st.Details[0].Domain)
	return st
}

// decodeJSON reads a 200 JSON body into a map.
func decodeJSON(t *testing.T, resp *http.Response) map[string]any {
	t.Helper()
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "body: %s", raw)
	var out map[string]any
	require.NoError(t, json.Unmarshal(raw, &out), "body: %s", raw)
	return out
}

// publish puts an event straight into JetStream on base's tenant subject,
// as a service's outbox would.
func (h *harness) publish(base string, m proto.Message) uint64 {
	h.t.Helper()
	return h.publishLegacy(tenantSubject(base, m), m)
}

// tenantSubject is the subject the services publish m on (natsx.Tenant with
// the practice, then the thread's patient or the user).
func tenantSubject(base string, m proto.Message) string {
	tokens := []string{m.(interface{ GetMeta() *typev1.EventMeta }).GetMeta().GetPractice()}
	switch m := m.(type) {
	case interface{ GetPatient() string }:
		tokens = append(tokens, m.GetPatient())
	case *conversationv1.ConversationCreated:
		tokens = append(tokens, m.GetConversation().GetPatient())
	case *conversationv1.ConversationUpdated:
		tokens = append(tokens, m.GetConversation().GetPatient())
	case *conversationv1.ConversationUserStateChanged:
		tokens = append(tokens, m.GetUser())
	case *conversationv1.ConversationRead:
		tokens = append(tokens, m.GetReader())
	}
	return natsx.Tenant(base, tokens...)
}

// publishLegacy puts an event on exactly subject: with a base subject, the
// pre-tenant form that versions before tenant subjects published.
func (h *harness) publishLegacy(subject string, m proto.Message) uint64 {
	h.t.Helper()
	raw, err := proto.Marshal(m)
	require.NoError(h.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ack, err := h.js.Publish(ctx, subject, raw)
	require.NoError(h.t, err)
	return ack.Sequence
}

// --- event stream client ---

// sseEvent is one parsed block of a text/event-stream.
type sseEvent struct {
	Event, ID, Data string
	Comments        []string
}

// sseClient reads /v1/events in a goroutine it owns.
type sseClient struct {
	t      testing.TB
	resp   *http.Response
	events chan sseEvent
	done   chan struct{}
}

// openEvents connects to /v1/events; lastID, when set, is sent as
// Last-Event-ID. It returns once the response headers arrived.
func (h *harness) openEvents(token, lastID string) *sseClient {
	h.t.Helper()
	return h.openEventsQuery(token, lastID, "")
}

// openEventsQuery is openEvents with a query string ("lastEventId=…").
func (h *harness) openEventsQuery(token, lastID, query string) *sseClient {
	h.t.Helper()
	resp := h.connectEvents(token, lastID, query)
	require.Equal(h.t, http.StatusOK, resp.StatusCode)
	return h.readEvents(resp)
}

// readEvents starts reading an event stream response.
func (h *harness) readEvents(resp *http.Response) *sseClient {
	c := &sseClient{t: h.t, resp: resp, events: make(chan sseEvent, 4096), done: make(chan struct{})}
	go c.read()
	h.t.Cleanup(c.close)
	return c
}

func (h *harness) connectEvents(token, lastID, query string) *http.Response {
	h.t.Helper()
	u := h.srv.URL + "/v1/events"
	if query != "" {
		u += "?" + query
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	require.NoError(h.t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := h.srv.Client().Do(req)
	require.NoError(h.t, err)
	return resp
}

func (c *sseClient) read() {
	defer close(c.done)
	defer close(c.events)
	sc := bufio.NewScanner(c.resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var ev sseEvent
	var data []string
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			ev.Data = strings.Join(data, "\n")
			c.events <- ev
			ev, data = sseEvent{}, nil
			continue
		}
		if strings.HasPrefix(line, ":") {
			ev.Comments = append(ev.Comments, strings.TrimPrefix(strings.TrimPrefix(line, ":"), " "))
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			ev.Event = value
		case "id":
			ev.ID = value
		case "data":
			data = append(data, value)
		}
	}
}

// close disconnects and waits for the reader.
func (c *sseClient) close() {
	_ = c.resp.Body.Close()
	<-c.done
}

// nextBlock returns the next block, comments and id-only blocks included.
func (c *sseClient) nextBlock() (sseEvent, bool) {
	c.t.Helper()
	select {
	case ev, ok := <-c.events:
		return ev, ok
	case <-time.After(waitFor):
		c.t.Fatal("no event stream block arrived")
		return sseEvent{}, false
	}
}

// next returns the next dispatched event (a block with data).
func (c *sseClient) next() sseEvent {
	c.t.Helper()
	for {
		ev, ok := c.nextBlock()
		require.True(c.t, ok, "event stream ended")
		if ev.Data != "" {
			return ev
		}
	}
}

// requireEnd waits for the stream to end, returning the blocks before it.
func (c *sseClient) requireEnd() []sseEvent {
	c.t.Helper()
	var out []sseEvent
	for {
		ev, ok := c.nextBlock()
		if !ok {
			return out
		}
		out = append(out, ev)
	}
}

// message decodes a message event's data.
func (ev sseEvent) message(t *testing.T) map[string]any {
	t.Helper()
	var out struct {
		Message map[string]any `json:"message"`
	}
	require.NoError(t, json.Unmarshal([]byte(ev.Data), &out), ev.Data)
	require.NotNil(t, out.Message, ev.Data)
	return out.Message
}

// conversation decodes a conversation event's data.
func (ev sseEvent) conversation(t *testing.T) map[string]any {
	t.Helper()
	var out struct {
		Conversation map[string]any `json:"conversation"`
	}
	require.NoError(t, json.Unmarshal([]byte(ev.Data), &out), ev.Data)
	require.NotNil(t, out.Conversation, ev.Data)
	return out.Conversation
}

// --- events ---

func meta(practice, actor string) *typev1.EventMeta {
	return &typev1.EventMeta{Id: "ev-" + actor, Time: timestamppb.Now(), Practice: practice, Actor: actor,
		Action: "message.send", Outcome: typev1.EventMeta_ALLOWED}
}

// messageCreated builds a MessageCreated in conversations/<conv> of patients/<patient>.
func messageCreated(practice, conv, patient, id, sender, text string, seq int64, sensitive bool) *deliveryv1.MessageCreated {
	return &deliveryv1.MessageCreated{
		Meta:    meta(practice, sender),
		Patient: "patients/" + patient,
		Message: &deliveryv1.Message{
			Name: "conversations/" + conv + "/messages/" + id, Sender: sender, Text: text, Sensitive: sensitive,
			Status: deliveryv1.Message_SENT, CreateTime: timestamppb.Now(), Seq: int32(seq),
			Attachments: []*deliveryv1.Message_AttachmentRef{{Attachment: "attachments/a1", Filename: "x-ray.png"}},
		},
	}
}

// --- fakes for the upstream service ports ---

// caller is who a fake saw calling, with the raw authorization metadata.
func caller(ctx context.Context) (auth.Identity, string) {
	id, _ := auth.FromContext(ctx)
	md, _ := metadata.FromIncomingContext(ctx)
	return id, strings.Join(md.Get("authorization"), ",")
}

// fakeConversation serves GetConversation from a map with the product's
// tenancy rule, and per-caller fields derived from the caller.
type fakeConversation struct {
	conversationv1.UnimplementedConversationServiceServer
	mu    sync.Mutex
	convs map[string]*convRecord
	// gate, when set, is waited on by GetConversation, which first sends
	// on gated (if set).
	gate  chan struct{}
	gated chan struct{}
	// gateOnly, when set, gates only the caller with this subject.
	gateOnly string
	// seenAuth is the authorization metadata of the last call.
	seenAuth string
	// createErr is returned by CreateConversation when set.
	createErr error
}

type convRecord struct{ practice, patient string }

func newFakeConversation() *fakeConversation {
	return &fakeConversation{convs: map[string]*convRecord{}}
}

func (f *fakeConversation) add(name, practice, patient string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.convs[name] = &convRecord{practice: practice, patient: patient}
}

func (f *fakeConversation) GetConversation(ctx context.Context, req *conversationv1.GetConversationRequest) (*conversationv1.Conversation, error) {
	id, md := caller(ctx)
	f.mu.Lock()
	gate, gated := f.gate, f.gated
	if f.gateOnly != "" && f.gateOnly != id.Subject {
		gate, gated = nil, nil
	}
	rec := f.convs[req.GetName()]
	f.seenAuth = md
	f.mu.Unlock()
	if gate != nil {
		if gated != nil {
			gated <- struct{}{}
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if rec == nil || rec.practice != id.Practice || (id.IsPatient() && rec.patient != id.Principal()) {
		return nil, errs.NotFound("Conversation not found")
	}
	return &conversationv1.Conversation{
		Name: req.GetName(), Patient: rec.patient, PatientDisplayName: "Pat",
		State:       conversationv1.Conversation_ACTIVE,
		UnreadCount: int32(len(id.Subject)), // per caller, so tests can tell whose view it is
		Pinned:      id.Subject == "doc",
	}, nil
}

// ListConversations serves the names filter the event stream uses, through
// GetConversation's rules; a thread the caller may not see is left out.
func (f *fakeConversation) ListConversations(ctx context.Context, req *conversationv1.ListConversationsRequest) (*conversationv1.ListConversationsResponse, error) {
	out := &conversationv1.ListConversationsResponse{}
	for _, name := range req.GetNames() {
		c, err := f.GetConversation(ctx, &conversationv1.GetConversationRequest{Name: name})
		if status.Code(err) == codes.NotFound {
			continue
		}
		if err != nil {
			return nil, err
		}
		out.Conversations = append(out.Conversations, c)
	}
	return out, nil
}

func (f *fakeConversation) CreateConversation(ctx context.Context, req *conversationv1.CreateConversationRequest) (*conversationv1.Conversation, error) {
	_, md := caller(ctx)
	f.mu.Lock()
	f.seenAuth = md
	err := f.createErr
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &conversationv1.Conversation{Name: "conversations/c1", Patient: req.GetConversation().GetPatient(),
		State: conversationv1.Conversation_ACTIVE}, nil
}

func (f *fakeConversation) lastAuth() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seenAuth
}

// fakeDelivery records MarkMessagesDelivered calls.
type fakeDelivery struct {
	deliveryv1.UnimplementedDeliveryServiceServer
	marks chan markCall
}

type markCall struct {
	caller string
	parent string
	upTo   int64
}

func newFakeDelivery() *fakeDelivery { return &fakeDelivery{marks: make(chan markCall, 1024)} }

func (f *fakeDelivery) MarkMessagesDelivered(ctx context.Context, req *deliveryv1.MarkMessagesDeliveredRequest) (*deliveryv1.MarkMessagesDeliveredResponse, error) {
	id, _ := caller(ctx)
	f.marks <- markCall{caller: id.Principal(), parent: req.GetParent(), upTo: req.GetUpToSeq()}
	return &deliveryv1.MarkMessagesDeliveredResponse{DeliveredSeq: req.GetUpToSeq()}, nil
}

// fakeAttachment stores uploads in memory and serves downloads.
type fakeAttachment struct {
	attachmentv1.UnimplementedAttachmentServiceServer
	mu            sync.Mutex
	unimplemented bool
	files         map[string]storedFile
	// uploads receives the outcome of every UploadAttachment call.
	uploads chan uploadRecord
	// failAfter, when set, breaks downloads after that many bytes.
	failAfter int
}

type storedFile struct {
	att  *attachmentv1.Attachment
	data []byte
}

type uploadRecord struct {
	header    *attachmentv1.UploadAttachmentRequest_Header
	received  int64
	completed bool
	err       error
	caller    string
}

func newFakeAttachment() *fakeAttachment {
	return &fakeAttachment{files: map[string]storedFile{}, uploads: make(chan uploadRecord, 16)}
}

func (f *fakeAttachment) UploadAttachment(stream attachmentv1.AttachmentService_UploadAttachmentServer) error {
	f.mu.Lock()
	unimpl := f.unimplemented
	f.mu.Unlock()
	if unimpl {
		return status.Error(codes.Unimplemented, "Attachments is not available")
	}
	id, _ := caller(stream.Context())
	rec := uploadRecord{caller: id.Principal()}
	defer func() { f.uploads <- rec }()
	first, err := stream.Recv()
	if err != nil {
		rec.err = err
		return err
	}
	rec.header = first.GetHeader()
	if rec.header == nil {
		return errs.InvalidArgument("the first frame must be the header")
	}
	hash := sha256.New()
	var data bytes.Buffer
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			rec.err = err
			return err
		}
		rec.received += int64(len(req.GetChunk()))
		hash.Write(req.GetChunk())
		if data.Len() < 1<<20 {
			data.Write(req.GetChunk())
		}
	}
	rec.completed = true
	att := &attachmentv1.Attachment{
		Name: "attachments/up1", Conversation: rec.header.GetConversation(), Filename: rec.header.GetFilename(),
		ContentType: rec.header.GetDeclaredContentType(), SizeBytes: int32(rec.received),
		Sha256: hex.EncodeToString(hash.Sum(nil)), CreateTime: timestamppb.Now(),
	}
	f.mu.Lock()
	f.files[att.GetName()] = storedFile{att: att, data: data.Bytes()}
	f.mu.Unlock()
	return stream.SendAndClose(att)
}

func (f *fakeAttachment) DownloadAttachment(req *attachmentv1.DownloadAttachmentRequest, stream attachmentv1.AttachmentService_DownloadAttachmentServer) error {
	f.mu.Lock()
	unimpl, failAfter := f.unimplemented, f.failAfter
	file, ok := f.files[req.GetName()]
	f.mu.Unlock()
	if unimpl {
		return status.Error(codes.Unimplemented, "Attachment downloads is not available")
	}
	if !ok {
		return errs.NotFound("Attachment not found")
	}
	if err := stream.Send(&attachmentv1.DownloadAttachmentResponse{
		Frame: &attachmentv1.DownloadAttachmentResponse_Attachment{Attachment: file.att}}); err != nil {
		return err
	}
	data := file.data
	if failAfter > 0 {
		data = data[:failAfter]
	}
	for len(data) > 0 {
		n := min(len(data), 1000)
		if err := stream.Send(&attachmentv1.DownloadAttachmentResponse{
			Frame: &attachmentv1.DownloadAttachmentResponse_Chunk{Chunk: data[:n]}}); err != nil {
			return err
		}
		data = data[n:]
	}
	if failAfter > 0 {
		return errs.NotFound("gone")
	}
	return nil
}
