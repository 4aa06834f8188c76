package audit_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	auditv1 "github.com/clinicchat/clinicchat/proto/clinicchat/audit/v1"
	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/audit"
	"github.com/clinicchat/clinicchat/services/audit/internal/ingest"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/events"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

const practice = "demo"

// harness is the audit service over bufconn gRPC with an embedded NATS.
type harness struct {
	t      *testing.T
	js     jetstream.JetStream
	tokens *testkit.Tokens
	verif  auth.Verifier
	cfg    audit.Config
	svc    *audit.Service
	client auditv1.AuditServiceClient
	conn   *grpc.ClientConn
	stop   func()
}

func newHarness(t *testing.T) *harness {
	_, _, js := testkit.NATS(t)
	return newHarnessOn(t, js)
}

// newHarnessOn is newHarness on an existing JetStream.
func newHarnessOn(t *testing.T, js jetstream.JetStream) *harness {
	tokens, verifier := testkit.NewTokens()
	dir := t.TempDir()
	h := &harness{t: t, js: js, tokens: tokens, verif: verifier, cfg: audit.Config{
		DatabaseDSN:        filepath.Join(dir, "audit.db"),
		SignerKeyFile:      filepath.Join(dir, "keys", "audit.key"),
		CheckpointInterval: 50 * time.Millisecond,
	}}
	require.NoError(t, audit.EnsureDevSignerKey(h.cfg.SignerKeyFile, ""))
	h.start()
	t.Cleanup(func() { h.stop() })
	return h
}

// start runs a fresh instance of the service on the same database.
func (h *harness) start() {
	t := h.t
	ctx := context.Background()
	srv := grpcx.NewServer(testkit.Logger(t), h.verif)
	svc, err := audit.New(ctx, h.cfg, audit.Deps{Log: testkit.Logger(t), JS: h.js, Health: srv.Health})
	require.NoError(t, err)
	svc.Register(srv.Server)
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///audit",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- svc.Run(runCtx) }()
	h.svc, h.client, h.conn = svc, auditv1.NewAuditServiceClient(conn), conn
	stopped := false
	h.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		require.NoError(t, <-done)
		_ = conn.Close()
		srv.Stop()
		require.NoError(t, svc.Close())
	}
}

func (h *harness) as(subject, role, practice string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+h.tokens.Token(h.t, subject, role, practice, 0))
}

func (h *harness) admin() context.Context { return h.as("boss", auth.RolePracticeAdmin, practice) }

// publish publishes an event with its meta id as Nats-Msg-Id, as the outbox
// relay does.
func (h *harness) publish(subject string, ev proto.Message, meta *typev1.EventMeta) {
	h.publishRaw(subject, ev, meta.GetId())
}

func (h *harness) publishRaw(subject string, ev proto.Message, msgID string) {
	b, err := proto.Marshal(ev)
	require.NoError(h.t, err)
	h.publishBytes(subject, b, msgID)
}

func (h *harness) publishBytes(subject string, b []byte, msgID string) {
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	_, err := h.js.Publish(context.Background(), subject, b, opts...)
	require.NoError(h.t, err)
}

// list returns every record matching filter, newest first.
func (h *harness) list(filter string) []*auditv1.AuditEvent {
	var out []*auditv1.AuditEvent
	tok := ""
	for {
		resp, err := h.client.ListAuditEvents(h.admin(), &auditv1.ListAuditEventsRequest{Filter: filter, PageSize: 500, PageToken: tok})
		require.NoError(h.t, err)
		out = append(out, resp.GetAuditEvents()...)
		if tok = resp.GetNextPageToken(); tok == "" {
			return out
		}
	}
}

func (h *harness) waitFor(filter string, n int) []*auditv1.AuditEvent {
	var got []*auditv1.AuditEvent
	require.Eventually(h.t, func() bool {
		got = h.list(filter)
		return len(got) >= n
	}, 30*time.Second, 20*time.Millisecond, "waiting for %d events matching %q", n, filter)
	return got
}

func who(subject, role string) auth.Identity {
	return auth.Identity{Subject: subject, Role: role, Practice: practice}
}

var (
	dentist = who("drsmith", auth.RoleDentist)
	patient = who("p1", auth.RolePatient)
	other   = who("p2", auth.RolePatient)
)

// sentinel publishes one marker event on every stream; once all are in the
// log, every event published before them on any stream has been handled.
func (h *harness) sentinel() {
	subjects := []string{natsx.SubjectConversationAccess, natsx.SubjectDeliveryAccess, natsx.SubjectAttachmentAccess,
		natsx.SubjectPreferencesAccess, natsx.SubjectGatewayAccess}
	marker := "sentinel." + ids.New()
	for _, s := range subjects {
		m := events.Meta(dentist, marker, "conversations/none", time.Now())
		h.publish(s, &typev1.AccessRecorded{Meta: m}, m)
	}
	h.waitFor(fmt.Sprintf("action=%q", marker), len(subjects))
}

func TestEveryActionOnEveryStreamIsLoggedOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	now := time.Now().UTC().Truncate(time.Microsecond)
	conv := "conversations/c1"
	msg := conv + "/messages/1"
	type pub struct {
		subject string
		ev      func(*typev1.EventMeta) proto.Message
		meta    *typev1.EventMeta
		logged  bool
	}
	access := func(m *typev1.EventMeta) proto.Message { return &typev1.AccessRecorded{Meta: m} }
	pubs := []pub{
		{natsx.SubjectConversationCreated, func(m *typev1.EventMeta) proto.Message {
			return &conversationv1.ConversationCreated{Meta: m, Conversation: &conversationv1.Conversation{Name: conv}}
		}, events.Meta(dentist, "conversation.create", conv, now), true},
		{natsx.SubjectMessageCreated, func(m *typev1.EventMeta) proto.Message {
			return &deliveryv1.MessageCreated{Meta: m, Message: &deliveryv1.Message{Name: msg, Text: "hello"}}
		}, events.Meta(dentist, "message.send", msg, now.Add(time.Second)), true},
		{natsx.SubjectConversationAccess, access, events.Meta(patient, "conversation.view", conv, now.Add(2*time.Second)), true},
		{natsx.SubjectConversationRead, func(m *typev1.EventMeta) proto.Message {
			return &conversationv1.ConversationRead{Meta: m, Conversation: conv, Reader: "patients/p1", UpToSeq: 1}
		}, events.Meta(patient, "conversation.read", conv, now.Add(3*time.Second)), true},
		{natsx.SubjectDeliveryAccess, access, events.Meta(patient, "message.unlock", msg, now.Add(4*time.Second)), true},
		{natsx.SubjectAttachmentUploaded, func(m *typev1.EventMeta) proto.Message {
			return &attachmentv1.AttachmentUploaded{Meta: m, Attachment: &attachmentv1.Attachment{Name: "attachments/a1", Filename: "x.pdf"}}
		}, events.Meta(dentist, "attachment.upload", "attachments/a1", now.Add(5*time.Second)), true},
		{natsx.SubjectAttachmentAccess, access, events.Meta(patient, "attachment.download", "attachments/a1", now.Add(6*time.Second)), true},
		{natsx.SubjectPreferencesChanged, func(m *typev1.EventMeta) proto.Message {
			return &preferencesv1.PreferencesChanged{Meta: m, Preferences: &preferencesv1.CommunicationPreferences{ChatOptIn: false}}
		}, events.Meta(patient, "preferences.update", "patients/p1/communicationPreferences", now.Add(7*time.Second)), true},
		{natsx.SubjectConversationUser, func(m *typev1.EventMeta) proto.Message {
			return &conversationv1.ConversationUserStateChanged{Meta: m, Conversation: conv, User: "users/drsmith", Pinned: true}
		}, events.Meta(dentist, "conversation.pin", conv, now.Add(8*time.Second)), true},
		{natsx.SubjectConversationAccess, access, events.Denied(other, "conversation.view", conv, "NOT_FOUND", now.Add(9*time.Second)), true},
		{natsx.SubjectGatewayAccess, access, events.Denied(patient, "attachment.download", "attachments/a1", "STEP_UP_REQUIRED", now.Add(10*time.Second)), true},
		{natsx.SubjectConversationUpdated, func(m *typev1.EventMeta) proto.Message {
			return &conversationv1.ConversationUpdated{Meta: m, Conversation: &conversationv1.Conversation{Name: conv}}
		}, events.System(practice, "conversation.archive", conv, now.Add(11*time.Second)), true},
		// Not actions: a receipt echo, a thread activity echo, a notification request.
		{natsx.SubjectMessageUpdated, func(m *typev1.EventMeta) proto.Message {
			return &deliveryv1.MessageUpdated{Meta: m, Message: &deliveryv1.Message{Name: msg}}
		}, events.System(practice, "message.status", msg, now.Add(12*time.Second)), false},
		{natsx.SubjectConversationUpdated, func(m *typev1.EventMeta) proto.Message {
			return &conversationv1.ConversationUpdated{Meta: m, Conversation: &conversationv1.Conversation{Name: conv}}
		}, events.System(practice, "conversation.activity", conv, now.Add(13*time.Second)), false},
		{natsx.SubjectNotification, func(m *typev1.EventMeta) proto.Message {
			return &conversationv1.Notification{Meta: m, Recipient: "patients/p1", Message: msg}
		}, events.System(practice, "notification.request", msg, now.Add(14*time.Second)), false},
	}
	want := 0
	for _, p := range pubs {
		h.publish(p.subject, p.ev(p.meta), p.meta)
		if p.logged {
			want++
		}
	}
	h.sentinel()
	var got []*auditv1.AuditEvent
	for _, e := range h.list(`time<"` + now.Add(time.Minute).Format(time.RFC3339Nano) + `" AND time>="` + now.Format(time.RFC3339Nano) + `"`) {
		if !strings.HasPrefix(e.GetAction(), "sentinel.") {
			got = append(got, e)
		}
	}
	require.Len(t, got, want)
	byID := map[string]*auditv1.AuditEvent{}
	for _, e := range got {
		byID[e.GetName()] = e
	}
	for _, p := range pubs {
		e, ok := byID["auditEvents/"+p.meta.GetId()]
		require.Equal(t, p.logged, ok, p.meta.GetAction())
		if !ok {
			continue
		}
		require.Equal(t, practice, e.GetPractice())
		require.Equal(t, p.meta.GetActor(), e.GetActor())
		require.Equal(t, p.meta.GetActorRole(), e.GetActorRole())
		require.Equal(t, p.meta.GetAction(), e.GetAction())
		require.Equal(t, p.meta.GetResource(), e.GetResource())
		require.Equal(t, p.meta.GetDetail(), e.GetDetail())
		require.True(t, p.meta.GetTime().AsTime().Equal(e.GetTime().AsTime()))
		wantOutcome := auditv1.AuditEvent_ALLOWED
		if p.meta.GetOutcome() == typev1.EventMeta_DENIED {
			wantOutcome = auditv1.AuditEvent_DENIED
		}
		require.Equal(t, wantOutcome, e.GetOutcome())
		hash, err := base64.StdEncoding.DecodeString(e.GetHash())
		require.NoError(t, err)
		require.Len(t, hash, tlog.HashSize)
	}
	// Newest first.
	for i := 1; i < len(got); i++ {
		require.False(t, got[i].GetTime().AsTime().After(got[i-1].GetTime().AsTime()))
	}

	// Filters over gRPC: one conversation and everything under it; refusals.
	res := h.list(`resource="` + conv + `" AND time>="` + now.Format(time.RFC3339Nano) + `"`)
	require.Len(t, res, 8) // create, send, view, read, unlock, pin, denied view, archive
	denied := h.list(`outcome="DENIED" AND time>="` + now.Format(time.RFC3339Nano) + `"`)
	require.Len(t, denied, 2)
	require.Equal(t, "users/drsmith", h.list(`actor="users/drsmith" AND action="message.send"`)[0].GetActor())
}

// The durable consumers of a version that consumed every subject (an
// existing data dir) are narrowed to the new filters at start: the events
// they had not consumed yet are all logged once (the product's echoes that
// an older version published on the audited kinds are delivered and skipped
// by the policy), and the non-actions and echo kinds are never delivered to
// the service again.
func TestConsumersOfAnOlderVersionAreNarrowed(t *testing.T) {
	t.Parallel()
	_, _, js := testkit.NATS(t)
	ctx := context.Background()
	for _, sc := range natsx.Streams(natsx.StreamsConfig{}) {
		_, err := js.CreateOrUpdateConsumer(ctx, sc.Name, jetstream.ConsumerConfig{
			Durable: ingest.DurablePrefix + natsx.StreamDomain(sc.Name), FilterSubjects: sc.Subjects,
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxDeliver: -1, MaxAckPending: 256,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		})
		require.NoError(t, err)
	}
	h := &harness{t: t, js: js}
	msg := "conversations/c1/messages/1"
	send := events.Meta(dentist, "message.send", msg, time.Now())
	h.publish(natsx.Tenant(natsx.SubjectMessageCreated, practice, "patients/p1"), &deliveryv1.MessageCreated{Meta: send}, send)
	note := events.System(practice, "notification.request", msg, time.Now())
	h.publish(natsx.Tenant(natsx.SubjectNotification, practice, "patients/p1"), &conversationv1.Notification{Meta: note}, note)
	view := events.Meta(patient, "conversation.view", "conversations/c1", time.Now())
	h.publish(natsx.Tenant(natsx.SubjectConversationAccess, practice), &typev1.AccessRecorded{Meta: view}, view)
	// The product's echoes as an older version published them (on the
	// audited kinds), as this one does (on the echo kinds), and a person's
	// update with an echo's action (audited, on the audited kind).
	oldStatus := events.System(practice, "message.status", msg, time.Now())
	h.publish(natsx.Tenant(natsx.SubjectMessageUpdated, practice, "patients/p1"), &deliveryv1.MessageUpdated{Meta: oldStatus}, oldStatus)
	newStatus := events.System(practice, "message.status", msg, time.Now())
	h.publish(natsx.Tenant(natsx.SubjectMessageStatusEcho, practice, "patients/p1"), &deliveryv1.MessageUpdated{Meta: newStatus}, newStatus)
	oldActivity := events.System(practice, "conversation.activity", "conversations/c1", time.Now())
	h.publish(natsx.Tenant(natsx.SubjectConversationUpdated, practice, "patients/p1"), &conversationv1.ConversationUpdated{Meta: oldActivity}, oldActivity)
	newActivity := events.System(practice, "conversation.activity", "conversations/c1", time.Now())
	h.publish(natsx.Tenant(natsx.SubjectConversationEcho, practice, "patients/p1"), &conversationv1.ConversationUpdated{Meta: newActivity}, newActivity)
	personal := events.Meta(patient, "message.status", msg, time.Now())
	h.publish(natsx.Tenant(natsx.PublishBase(natsx.SubjectMessageStatusEcho, personal.GetActor(), personal.GetAction()), practice, "patients/p1"),
		&deliveryv1.MessageUpdated{Meta: personal}, personal)

	h = newHarnessOn(t, js)
	h.sentinel()
	require.Len(t, h.list(`action="message.send"`), 1)
	require.Len(t, h.list(`action="conversation.view"`), 1)
	status := h.list(`action="message.status"`)
	require.Len(t, status, 1, "the person's update only")
	require.Equal(t, "auditEvents/"+personal.GetId(), status[0].GetName())
	require.Empty(t, h.list(`action="conversation.activity"`))
	// Delivered to the audit: each stream's actions, the sentinel and the
	// echoes published before the echo kinds; never a non-action or an echo
	// on its own kind.
	delivered := map[string]uint64{natsx.StreamDelivery: 4, natsx.StreamConversation: 3}
	for _, spec := range ingest.Specs() {
		cons, err := js.Consumer(ctx, spec.Stream, spec.Durable)
		require.NoError(t, err)
		var c *jetstream.ConsumerInfo
		require.Eventually(t, func() bool { // acks are sent without waiting for a reply
			c, err = cons.Info(ctx)
			return err == nil && c.NumAckPending == 0
		}, 10*time.Second, 10*time.Millisecond, spec.Durable)
		filters := c.Config.FilterSubjects
		if c.Config.FilterSubject != "" { // the server's form of a single filter
			filters = append(filters, c.Config.FilterSubject)
		}
		require.ElementsMatch(t, spec.FilterSubjects, filters, spec.Durable)
		if want, ok := delivered[spec.Stream]; ok {
			// The skipped kinds are behind the consumer, never delivered.
			require.Zero(t, c.NumPending)
			require.Zero(t, c.NumRedelivered)
			require.Equal(t, want, c.Delivered.Consumer, spec.Durable)
		}
	}
}

func TestRedeliveredAndDuplicateEventsAreLoggedOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	m := events.Meta(dentist, "message.send", "conversations/c/messages/1", time.Now())
	ev := &deliveryv1.MessageCreated{Meta: m, Message: &deliveryv1.Message{Name: "conversations/c/messages/1"}}
	h.publish(natsx.SubjectMessageCreated, ev, m)     // the original
	h.publish(natsx.SubjectMessageCreated, ev, m)     // a relay retry: dropped by JetStream
	h.publishRaw(natsx.SubjectMessageCreated, ev, "") // republished past the duplicate window
	h.publishRaw(natsx.SubjectMessageCreated, ev, ids.New())
	h.publishRaw(natsx.SubjectGatewayAccess, &typev1.AccessRecorded{Meta: m}, "") // even on another stream
	h.sentinel()
	got := h.list(`action="message.send"`)
	require.Len(t, got, 1)
	require.Equal(t, "auditEvents/"+m.GetId(), got[0].GetName())

	// A restart redelivers nothing that was acked, and the log stays the same.
	h.stop()
	h.start()
	h.sentinel()
	require.Len(t, h.list(`action="message.send"`), 1)
}

func TestPoisonMessagesAreDroppedWithoutBlocking(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.publishBytes(natsx.SubjectMessageCreated, []byte{0xff, 0xfe, 0xfd}, "") // undecodable
	h.publishBytes(natsx.SubjectMessageCreated, nil, "")                      // no meta
	b, err := proto.Marshal(&deliveryv1.MessageCreated{Patient: "patients/p1"})
	require.NoError(t, err)
	h.publishBytes(natsx.SubjectMessageCreated, b, "") // no meta either
	m := events.Meta(dentist, "message.send", "conversations/c/messages/2", time.Now())
	h.publish(natsx.SubjectMessageCreated, &deliveryv1.MessageCreated{Meta: m}, m)
	got := h.waitFor(`action="message.send"`, 1)
	require.Len(t, got, 1)
	require.Equal(t, int32(0), got[0].GetIndex())
}

// With the audit service stopped, events wait in JetStream; when it starts
// again, every one of them is appended, exactly once.
func TestStoppedServiceCatchesUpWithEveryEvent(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.sentinel() // the durable consumers exist
	h.stop()

	const n = 1000
	for i := range n {
		m := events.Meta(dentist, "message.send", fmt.Sprintf("conversations/c%d/messages/%d", i%7, i), time.Now())
		b, err := proto.Marshal(&deliveryv1.MessageCreated{Meta: m, Message: &deliveryv1.Message{Text: "hi"}})
		require.NoError(t, err)
		_, err = h.js.PublishMsgAsync(&nats.Msg{Subject: natsx.SubjectMessageCreated, Data: b}, jetstream.WithMsgID(m.GetId()))
		require.NoError(t, err)
	}
	select {
	case <-h.js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishing timed out")
	}

	h.start()
	var sends int
	require.Eventually(t, func() bool {
		v, err := h.client.VerifyAuditLog(h.admin(), &auditv1.VerifyAuditLogRequest{})
		require.NoError(t, err)
		return v.GetTreeSize() >= n+5
	}, 60*time.Second, 50*time.Millisecond)
	stream, err := h.client.ExportAuditEvents(h.admin(), &auditv1.ExportAuditEventsRequest{Filter: `action="message.send"`})
	require.NoError(t, err)
	seen := map[string]bool{}
	var last int32 = -1
	for {
		e, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		require.False(t, seen[e.GetName()], "duplicate %s", e.GetName())
		seen[e.GetName()] = true
		require.Greater(t, e.GetIndex(), last, "oldest first")
		last = e.GetIndex()
		sends++
	}
	require.Equal(t, n, sends)
	v, err := h.client.VerifyAuditLog(h.admin(), &auditv1.VerifyAuditLogRequest{})
	require.NoError(t, err)
	require.True(t, v.GetValid(), v.GetReason())
	require.Equal(t, int32(n+5), v.GetTreeSize())
}

// Message text and other PHI in an event's payload never reach the log.
func TestNoMessageTextInTheLog(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	canary := "CANARY-" + ids.New()
	m1 := events.Meta(dentist, "message.send", "conversations/c/messages/1", time.Now())
	h.publish(natsx.SubjectMessageCreated, &deliveryv1.MessageCreated{Meta: m1, Patient: "patients/p1", Message: &deliveryv1.Message{
		Name: "conversations/c/messages/1", Text: canary, Sensitive: true,
		Attachments: []*deliveryv1.Message_AttachmentRef{{Attachment: "attachments/a", Filename: canary + ".pdf"}},
	}}, m1)
	m2 := events.Meta(dentist, "attachment.upload", "attachments/a", time.Now())
	h.publish(natsx.SubjectAttachmentUploaded, &attachmentv1.AttachmentUploaded{Meta: m2,
		Attachment: &attachmentv1.Attachment{Name: "attachments/a", Filename: canary + ".pdf"}}, m2)
	m3 := events.Meta(who("pms", auth.RoleSystem), "patient.upsert", "patients/p1", time.Now())
	h.publish(natsx.SubjectPatientUpserted, &preferencesv1.PatientUpserted{Meta: m3,
		Patient: &preferencesv1.Patient{Name: "patients/p1", DisplayName: canary, DateOfBirth: "1980-01-01"}}, m3)
	m4 := events.Meta(dentist, "message.send", "conversations/c/messages/2", time.Now())
	h.publish(natsx.SubjectMessageUpdated, &deliveryv1.MessageUpdated{Meta: m4, Message: &deliveryv1.Message{Text: canary}}, m4)
	got := h.waitFor("", 4)
	require.Len(t, got, 4)
	for _, e := range got {
		b, err := protojson.Marshal(e)
		require.NoError(t, err)
		require.NotContains(t, string(b), "CANARY")
	}
	stream, err := h.client.ExportAuditEvents(h.admin(), &auditv1.ExportAuditEventsRequest{})
	require.NoError(t, err)
	for {
		e, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		b, err := protojson.Marshal(e)
		require.NoError(t, err)
		require.NotContains(t, string(b), "CANARY")
	}
	// Nor anywhere in the database files.
	h.stop()
	files, err := filepath.Glob(h.cfg.DatabaseDSN + "*")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		require.False(t, bytes.Contains(b, []byte("CANARY")), f)
	}
}

func TestOnlyPracticeAdminsReadTheLog(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	m := events.Meta(dentist, "conversation.view", "conversations/c", time.Now())
	h.publish(natsx.SubjectConversationAccess, &typev1.AccessRecorded{Meta: m}, m)
	h.waitFor("", 1)

	calls := map[string]func(ctx context.Context) error{
		"list": func(ctx context.Context) error {
			_, err := h.client.ListAuditEvents(ctx, &auditv1.ListAuditEventsRequest{})
			return err
		},
		"export": func(ctx context.Context) error {
			s, err := h.client.ExportAuditEvents(ctx, &auditv1.ExportAuditEventsRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		},
		"verify": func(ctx context.Context) error {
			_, err := h.client.VerifyAuditLog(ctx, &auditv1.VerifyAuditLogRequest{})
			return err
		},
		"checkpoint": func(ctx context.Context) error {
			_, err := h.client.GetCheckpoint(ctx, &auditv1.GetCheckpointRequest{})
			return err
		},
		"inclusion": func(ctx context.Context) error {
			_, err := h.client.GetInclusionProof(ctx, &auditv1.GetInclusionProofRequest{Index: 0})
			return err
		},
		"consistency": func(ctx context.Context) error {
			_, err := h.client.GetConsistencyProof(ctx, &auditv1.GetConsistencyProofRequest{FromTreeSize: 1})
			return err
		},
	}
	for name, call := range calls {
		for _, role := range []string{auth.RoleDentist, auth.RoleHygienist, auth.RoleAssistant, auth.RoleFrontDesk, auth.RolePatient, auth.RoleSystem} {
			err := call(h.as("someone", role, practice))
			require.Equal(t, codes.PermissionDenied, status.Code(err), "%s as %s", name, role)
			requireReason(t, err, "PERMISSION_DENIED")
		}
		require.Equal(t, codes.Unauthenticated, status.Code(call(context.Background())), name)
		require.NoError(t, call(h.admin()), name)
	}
	// Another practice's administrator sees nothing of this practice.
	resp, err := h.client.ListAuditEvents(h.as("boss", auth.RolePracticeAdmin, "elsewhere"), &auditv1.ListAuditEventsRequest{})
	require.NoError(t, err)
	require.Empty(t, resp.GetAuditEvents())

	_, err = h.client.ListAuditEvents(h.admin(), &auditv1.ListAuditEventsRequest{Filter: `who="me"`})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	requireReason(t, err, "INVALID_ARGUMENT")
	require.Contains(t, status.Convert(err).Message(), `unknown field "who"`)
}

func requireReason(t *testing.T, err error, reason string) {
	t.Helper()
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			require.Equal(t, reason, info.GetReason())
			require.Equal(t, "clinicchat", info.GetDomain())
			return
		}
	}
	t.Fatalf("no ErrorInfo in %v", err)
}

func TestCheckpointProofsAndVerifyOverGRPC(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for i := range 7 {
		m := events.Meta(dentist, "conversation.view", fmt.Sprintf("conversations/c%d", i), time.Now())
		h.publish(natsx.SubjectConversationAccess, &typev1.AccessRecorded{Meta: m}, m)
	}
	h.waitFor("", 7)
	cp, err := h.client.GetCheckpoint(h.admin(), &auditv1.GetCheckpointRequest{})
	require.NoError(t, err)
	require.Equal(t, int32(7), cp.GetTreeSize())

	// The note verifies with the service's public key and says what the
	// response says.
	v, err := note.NewVerifier(h.svc.VerifierKey())
	require.NoError(t, err)
	pub, err := os.ReadFile(h.cfg.SignerKeyFile + ".pub")
	require.NoError(t, err)
	require.Equal(t, h.svc.VerifierKey()+"\n", string(pub))
	n, err := note.Open([]byte(cp.GetNote()), note.VerifierList(v))
	require.NoError(t, err)
	tree, err := tlog.ParseTree([]byte(n.Text))
	require.NoError(t, err)
	require.Equal(t, int64(cp.GetTreeSize()), tree.N)
	require.Equal(t, cp.GetRootHash(), tree.Hash.String())

	// Every listed event is provably in the checkpointed tree, and the list
	// says so itself.
	for _, e := range h.list("") {
		require.Equal(t, auditv1.AuditEvent_VERIFIED, e.GetIntegrity(), "event %d", e.GetIndex())
		p, err := h.client.GetInclusionProof(h.admin(), &auditv1.GetInclusionProofRequest{Index: int64(e.GetIndex()), TreeSize: int64(cp.GetTreeSize())})
		require.NoError(t, err)
		leaf, err := tlog.ParseHash(e.GetHash())
		require.NoError(t, err)
		require.NoError(t, tlog.CheckRecord(parseHashes(t, p.GetHashes()), int64(cp.GetTreeSize()), tree.Hash, int64(e.GetIndex()), leaf))
	}

	for i := range 5 {
		m := events.Denied(other, "conversation.view", fmt.Sprintf("conversations/c%d", i), "NOT_FOUND", time.Now())
		h.publish(natsx.SubjectConversationAccess, &typev1.AccessRecorded{Meta: m}, m)
	}
	h.waitFor("", 12)
	// Logged after the checkpoint: intact, sealed or not yet (the periodic
	// signer runs every 50 ms here).
	for _, e := range h.list("") {
		require.Contains(t, []auditv1.AuditEvent_Integrity{auditv1.AuditEvent_VERIFIED, auditv1.AuditEvent_UNVERIFIED},
			e.GetIntegrity(), "event %d", e.GetIndex())
	}
	cp2, err := h.client.GetCheckpoint(h.admin(), &auditv1.GetCheckpointRequest{})
	require.NoError(t, err)
	require.Equal(t, int32(12), cp2.GetTreeSize())
	root2, err := tlog.ParseHash(cp2.GetRootHash())
	require.NoError(t, err)
	cons, err := h.client.GetConsistencyProof(h.admin(), &auditv1.GetConsistencyProofRequest{FromTreeSize: 7})
	require.NoError(t, err)
	require.NoError(t, tlog.CheckTree(parseHashes(t, cons.GetHashes()), 12, root2, 7, tree.Hash))

	res, err := h.client.VerifyAuditLog(h.admin(), &auditv1.VerifyAuditLogRequest{CheckpointTreeSize: int64(cp.GetTreeSize()), CheckpointRootHash: cp.GetRootHash()})
	require.NoError(t, err)
	require.True(t, res.GetValid(), res.GetReason())
	require.Equal(t, int32(12), res.GetChecked())
	require.Equal(t, int32(12), res.GetTreeSize())
	require.Equal(t, cp2.GetRootHash(), res.GetRootHash())

	// A kept checkpoint that the log does not match.
	res, err = h.client.VerifyAuditLog(h.admin(), &auditv1.VerifyAuditLogRequest{CheckpointTreeSize: 40, CheckpointRootHash: cp.GetRootHash()})
	require.NoError(t, err)
	require.False(t, res.GetValid())
	require.Equal(t, int32(12), res.GetFirstBadIndex())
	_, err = h.client.VerifyAuditLog(h.admin(), &auditv1.VerifyAuditLogRequest{CheckpointTreeSize: 3})
	require.Equal(t, codes.InvalidArgument, status.Code(err))

	// The periodic signer keeps up too.
	require.Eventually(t, func() bool {
		c, err := h.client.GetCheckpoint(h.admin(), &auditv1.GetCheckpointRequest{})
		return err == nil && c.GetTreeSize() == 12
	}, 10*time.Second, 20*time.Millisecond)
	for _, e := range h.list("") {
		require.Equal(t, auditv1.AuditEvent_VERIFIED, e.GetIntegrity(), "event %d, under the checkpoint of size 12", e.GetIndex())
	}
}

func parseHashes(t *testing.T, in []string) []tlog.Hash {
	out := make([]tlog.Hash, len(in))
	for i, s := range in {
		h, err := tlog.ParseHash(s)
		require.NoError(t, err)
		out[i] = h
	}
	return out
}

func TestConfig(t *testing.T) {
	t.Parallel()
	var c audit.Config
	require.Error(t, c.Validate())
	err := (&audit.Config{CheckpointInterval: -1}).Validate()
	require.ErrorContains(t, err, "--database-dsn")
	require.ErrorContains(t, err, "--audit-signing-key-file")
	require.ErrorContains(t, err, "--checkpoint-interval")
	require.NoError(t, (&audit.Config{DatabaseDSN: "x", SignerKeyFile: "k"}).Validate())

	_, err = audit.New(context.Background(), audit.Config{DatabaseDSN: filepath.Join(t.TempDir(), "a.db"),
		SignerKeyFile: filepath.Join(t.TempDir(), "missing.key")}, audit.Deps{JS: nil})
	require.Error(t, err)
}
