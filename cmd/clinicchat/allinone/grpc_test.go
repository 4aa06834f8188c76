package allinone_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// Practice systems use the same services over gRPC on --grpc-addr, with
// health, reflection and the same bearer tokens.
func TestPracticeSystemsUseTheGRPCAPI(t *testing.T) {
	in := start(t, t.TempDir())
	cc, err := grpc.NewClient(in.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	h, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, h.GetStatus())

	refl, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	require.NoError(t, err)
	require.NoError(t, refl.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}))
	resp, err := refl.Recv()
	require.NoError(t, err)
	var services []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		services = append(services, s.GetName())
	}
	for _, want := range []string{"clinicchat.conversation.v1.ConversationService", "clinicchat.delivery.v1.DeliveryService",
		"clinicchat.attachment.v1.AttachmentService", "clinicchat.preferences.v1.PreferencesService", "clinicchat.audit.v1.AuditService"} {
		require.Contains(t, services, want)
	}

	prefs := preferencesv1.NewPreferencesServiceClient(cc)
	_, err = prefs.ListPatients(ctx, &preferencesv1.ListPatientsRequest{})
	require.Equal(t, codes.Unauthenticated, status.Code(err), "a token is required")

	as := func(sub, role string) context.Context {
		tok, err := in.DevIssuer.Issue(sub, role, "demo", "", 0)
		require.NoError(t, err)
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	pms := as("pms", "system")
	p, err := prefs.UpsertPatient(pms, &preferencesv1.UpsertPatientRequest{Patient: &preferencesv1.Patient{
		ExternalId: "PMS-2001", DisplayName: "Grace Hopper", DateOfBirth: "1956-12-09", HasPortalAccount: true}})
	require.NoError(t, err)
	require.NotEmpty(t, p.GetName())

	conv, err := conversationv1.NewConversationServiceClient(cc).CreateConversation(pms,
		&conversationv1.CreateConversationRequest{Conversation: &conversationv1.Conversation{Patient: p.GetName()}})
	require.NoError(t, err)
	_, err = deliveryv1.NewDeliveryServiceClient(cc).CreateMessage(pms, &deliveryv1.CreateMessageRequest{
		Parent: conv.GetName(), Text: "Your invoice is ready", RequestId: "pms-1"})
	require.Equal(t, codes.FailedPrecondition, status.Code(err))
	require.Equal(t, errs.ReasonChatOptedOut, errs.Reason(err), "not opted in yet")
}
