package allinone_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/internal/e2e"
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

	e2e.GRPCEdge(t, ctx, cc)

	prefs := preferencesv1.NewPreferencesServiceClient(cc)

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
