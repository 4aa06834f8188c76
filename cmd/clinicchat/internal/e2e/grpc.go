package e2e

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
)

// GRPCEdge checks what a practice system finds first on a public gRPC
// address (the all-in-one's --grpc-addr, the gateway's edge): health
// SERVING, reflection listing every public service, and a call without a
// token refused UNAUTHENTICATED.
func GRPCEdge(t *testing.T, ctx context.Context, cc *grpc.ClientConn) {
	t.Helper()
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

	_, err = preferencesv1.NewPreferencesServiceClient(cc).ListPatients(ctx, &preferencesv1.ListPatientsRequest{})
	require.Equal(t, codes.Unauthenticated, status.Code(err), "a token is required")
}
