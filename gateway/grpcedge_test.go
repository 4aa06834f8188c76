package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
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
	"google.golang.org/grpc/test/bufconn"

	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	auditv1 "github.com/clinicchat/clinicchat/proto/clinicchat/audit/v1"
	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// The edge serves every public service on one address: health and
// reflection of its own, and every call — unary, client- and server-
// streaming — forwarded with its bearer token to the service, which verifies
// it; statuses and their details come back unchanged.
func TestGRPCEdgeForwardsEveryKindOfCall(t *testing.T) {
	tokens, verifier := testkit.NewTokens()
	att := newFakeAttachment()
	lis := bufconn.Listen(1 << 20)
	gs := grpcx.NewServer(testkit.Logger(t), verifier)
	attachmentv1.RegisterAttachmentServiceServer(gs, att)
	conversationv1.RegisterConversationServiceServer(gs, conversationv1.UnimplementedConversationServiceServer{})
	deliveryv1.RegisterDeliveryServiceServer(gs, deliveryv1.UnimplementedDeliveryServiceServer{})
	preferencesv1.RegisterPreferencesServiceServer(gs, preferencesv1.UnimplementedPreferencesServiceServer{})
	auditv1.RegisterAuditServiceServer(gs, auditv1.UnimplementedAuditServiceServer{})
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	backend, err := grpcx.DialListener(lis.DialContext)
	require.NoError(t, err)
	t.Cleanup(func() { _ = backend.Close() })

	_, err = NewGRPCEdge(map[string]grpc.ClientConnInterface{"conversation": backend})
	require.ErrorContains(t, err, "no upstream", "every service needs its upstream")
	upstreams := map[string]grpc.ClientConnInterface{}
	for _, name := range UpstreamNames {
		upstreams[name] = backend
	}
	edge, err := NewGRPCEdge(upstreams)
	require.NoError(t, err)
	edge.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	el, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = edge.Serve(el) }()
	t.Cleanup(func() { edge.Shutdown(time.Second) })

	cc, err := grpc.NewClient(el.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()

	h, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, h.GetStatus())

	// Reflection lists the services and serves their descriptors.
	refl, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	require.NoError(t, err)
	require.NoError(t, refl.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}))
	resp, err := refl.Recv()
	require.NoError(t, err)
	var listed []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		listed = append(listed, s.GetName())
	}
	for svc := range EdgeServices {
		require.Contains(t, listed, svc)
	}
	require.Contains(t, listed, "grpc.health.v1.Health")
	require.NoError(t, refl.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{
		FileContainingSymbol: "clinicchat.delivery.v1.DeliveryService"}}))
	resp, err = refl.Recv()
	require.NoError(t, err)
	require.NotEmpty(t, resp.GetFileDescriptorResponse().GetFileDescriptorProto())

	client := attachmentv1.NewAttachmentServiceClient(cc)
	upload := func(ctx context.Context, data []byte) (*attachmentv1.Attachment, error) {
		up, err := client.UploadAttachment(ctx)
		if err != nil {
			return nil, err
		}
		if err := up.Send(&attachmentv1.UploadAttachmentRequest{Frame: &attachmentv1.UploadAttachmentRequest_Header_{
			Header: &attachmentv1.UploadAttachmentRequest_Header{Conversation: "conversations/c1", Filename: "x.bin", DeclaredContentType: "application/pdf"}}}); err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		for len(data) > 0 {
			n := min(len(data), 3000)
			if err := up.Send(&attachmentv1.UploadAttachmentRequest{Frame: &attachmentv1.UploadAttachmentRequest_Chunk{Chunk: data[:n]}}); err != nil {
				break // the status comes from CloseAndRecv
			}
			data = data[n:]
		}
		return up.CloseAndRecv()
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 4000) // 64,000 bytes, many frames
	_, err = upload(ctx, data)
	require.Equal(t, codes.Unauthenticated, status.Code(err), "the service verifies the token: none, none accepted")

	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tokens.Token(t, "dr-lee", "dentist", "north", 0))
	got, err := upload(authed, data)
	require.NoError(t, err)
	require.Equal(t, int32(len(data)), got.GetSizeBytes())
	rec := <-att.uploads
	require.Equal(t, "users/dr-lee", rec.caller, "the caller's identity reached the service")

	down, err := client.DownloadAttachment(authed, &attachmentv1.DownloadAttachmentRequest{Name: got.GetName()})
	require.NoError(t, err)
	var back bytes.Buffer
	for {
		f, err := down.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		back.Write(f.GetChunk())
	}
	require.Equal(t, data, back.Bytes())

	_, err = client.GetAttachment(authed, &attachmentv1.GetAttachmentRequest{Name: "attachments/none"})
	require.Equal(t, codes.Unimplemented, status.Code(err))
	down, err = client.DownloadAttachment(authed, &attachmentv1.DownloadAttachmentRequest{Name: "attachments/none"})
	require.NoError(t, err)
	_, err = down.Recv()
	require.Equal(t, codes.NotFound, status.Code(err))
	require.Equal(t, errs.ReasonNotFound, errs.Reason(err), "details pass through")

	// A service the edge does not serve.
	err = cc.Invoke(authed, "/clinicchat.artifact.v1.ArtifactProviderService/ListArtifactRecords", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
	require.Equal(t, codes.Unimplemented, status.Code(err))
}
