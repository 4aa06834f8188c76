package allinone_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/clinicchat/clinicchat/gateway"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	conversationsvc "github.com/clinicchat/clinicchat/services/conversation"
	"github.com/clinicchat/clinicchat/services/delivery"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
	"github.com/clinicchat/clinicchat/services/preferences"
)

// node is one separately started server: its own gRPC listener, its own NATS
// connection, its own database connections — as a separate pod would be.
type node struct {
	addr string
	js   jetstream.JetStream
}

func serveNode(t *testing.T, natsURL string, verifier auth.Verifier, register func(ctx context.Context, js jetstream.JetStream, g *grpc.Server) func(context.Context) error) node {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	srv := grpcx.NewServer(testkit.Logger(t), verifier)
	ctx, cancel := context.WithCancel(context.Background())
	run := register(ctx, js, srv.Server)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{}, 2)
	go func() { _ = srv.Serve(lis); done <- struct{}{} }()
	go func() { _ = run(ctx); done <- struct{}{} }()
	t.Cleanup(func() {
		cancel()
		srv.Shutdown(5 * time.Second)
		<-done
		<-done
	})
	return node{addr: lis.Addr().String(), js: js}
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpcx.Dial(addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// Two gateways and two delivery services, started separately on loopback
// against one PostgreSQL and one NATS: a patient's stream on gateway A
// receives a message sent through gateway B, exactly once.
func TestTwoGatewaysTwoDeliveryReplicas(t *testing.T) {
	ns, _, _ := testkit.NATS(t)
	natsURL := ns.ClientURL()
	tokens, verifier := testkit.NewTokens()
	prefsDSN := testkit.PostgresSchema(t)
	convDSN := testkit.PostgresSchema(t)
	deliveryDSN := testkit.PostgresSchema(t) // one database, two replicas
	log := testkit.Logger(t)

	prefs := serveNode(t, natsURL, verifier, func(ctx context.Context, js jetstream.JetStream, g *grpc.Server) func(context.Context) error {
		s, err := preferences.New(ctx, preferences.Config{DatabaseDSN: prefsDSN}, preferences.Deps{Log: log, JS: js})
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		s.Register(g)
		return s.Run
	})
	conv := serveNode(t, natsURL, verifier, func(ctx context.Context, js jetstream.JetStream, g *grpc.Server) func(context.Context) error {
		s, err := conversationsvc.New(ctx, conversationsvc.Config{DatabaseDSN: convDSN, ArchiveAfter: time.Hour, ArchiveSweepInterval: time.Hour},
			conversationsvc.Deps{Log: log, JS: js, Preferences: dial(t, prefs.addr)})
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		s.Register(g)
		return s.Run
	})
	newDelivery := func() node {
		return serveNode(t, natsURL, verifier, func(ctx context.Context, js jetstream.JetStream, g *grpc.Server) func(context.Context) error {
			s, err := delivery.New(ctx, delivery.Config{DatabaseDSN: deliveryDSN, StepUpWindow: 5 * time.Minute},
				delivery.Deps{Log: log, JS: js, Conversations: dial(t, conv.addr), Preferences: dial(t, prefs.addr), Attachments: dial(t, conv.addr)})
			require.NoError(t, err)
			t.Cleanup(func() { _ = s.Close() })
			s.Register(g)
			return s.Run
		})
	}
	deliveryA, deliveryB := newDelivery(), newDelivery()
	newGateway := func(deliveryAddr string) string {
		nc, err := nats.Connect(natsURL)
		require.NoError(t, err)
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		other := dial(t, conv.addr)
		gw, err := gateway.New(gateway.Config{}, gateway.Deps{Log: log, Verifier: verifier, JS: js,
			Conversation: dial(t, conv.addr), Delivery: dial(t, deliveryAddr), Preferences: dial(t, prefs.addr), Attachment: other, Audit: other})
		require.NoError(t, err)
		srv := httptest.NewServer(gw.Handler())
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = gw.Shutdown(ctx)
			srv.Close()
		})
		return srv.URL
	}
	gatewayA, gatewayB := newGateway(deliveryA.addr), newGateway(deliveryB.addr)

	// The practice system registers the patient; the patient opts in.
	as := func(sub, role string) context.Context {
		return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tokens.Token(t, sub, role, "north", 0))
	}
	pc := preferencesv1.NewPreferencesServiceClient(dial(t, prefs.addr))
	_, err := pc.UpsertPatient(as("pms", "system"), &preferencesv1.UpsertPatientRequest{Patient: &preferencesv1.Patient{
		Name: "patients/pat1", ExternalId: "E1", DisplayName: "Pat One", DateOfBirth: "1980-02-02", HasPortalAccount: true}})
	require.NoError(t, err)
	_, err = pc.UpdateCommunicationPreferences(as("pat1", "patient"), &preferencesv1.UpdateCommunicationPreferencesRequest{
		CommunicationPreferences: &preferencesv1.CommunicationPreferences{Name: "patients/pat1/communicationPreferences", ChatOptIn: true}})
	require.NoError(t, err)

	staffB := &client{t: t, base: gatewayB, token: tokens.Token(t, "dr-b", "dentist", "north", 0)}
	staffA := &client{t: t, base: gatewayA, token: tokens.Token(t, "dr-a", "dentist", "north", 0)}
	patientA := &client{t: t, base: gatewayA, token: tokens.Token(t, "pat1", "patient", "north", 0)}
	c := staffB.startConversation("pat1")
	events := patientA.events("")

	viaB := staffB.send(c.Name, "sent through gateway B", "b-1")
	require.Equal(t, viaB.Name, eventMessage(t, events.next(t, "message.created")).Name)
	viaA := staffA.send(c.Name, "sent through gateway A", "a-1")
	require.Equal(t, viaA.Name, eventMessage(t, events.next(t, "message.created")).Name, "the first message came once")

	// Both replicas relay one outbox table: each event is published once.
	var sent []string
	for i := range 20 {
		sent = append(sent, staffB.send(c.Name, "more", reqID("m", i)).Name)
	}
	stream, err := deliveryA.js.Stream(context.Background(), natsx.StreamDelivery)
	require.NoError(t, err)
	subject := natsx.CreatedSubject(natsx.Tenant(natsx.SubjectMessageCreated, "north", "patients/pat1"), false)
	require.Eventually(t, func() bool {
		info, err := stream.Info(context.Background(), jetstream.WithSubjectFilter(natsx.SubjectMessageCreated+".>"))
		return err == nil && len(info.State.Subjects) == 1 && info.State.Subjects[subject] == 22
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, http.StatusOK, staffA.do("GET", "/v1/"+c.Name+"/messages", nil, nil))

	// The patient reads ten on gateway A, drops, and resumes on gateway B:
	// the cursor is the streams' sequences, which both gateways share.
	var lastID string
	for _, name := range sent[:10] {
		ev := events.next(t, "message.created")
		require.Equal(t, name, eventMessage(t, ev).Name)
		lastID = ev.ID
	}
	events.cancel()
	patientB := &client{t: t, base: gatewayB, token: patientA.token}
	resumed := patientB.events(lastID)
	for _, name := range sent[10:] {
		require.Equal(t, name, eventMessage(t, resumed.next(t, "message.created")).Name)
	}
	live := staffA.send(c.Name, "after the move", "a-2")
	require.Equal(t, live.Name, eventMessage(t, resumed.next(t, "message.created")).Name, "nothing twice, then live")
}
