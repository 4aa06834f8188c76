// Package grpcapi adapts the delivery application layer to gRPC.
package grpcapi

import (
	"context"

	artifactv1 "github.com/clinicchat/clinicchat/proto/clinicchat/artifact/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/app"
)

// Server implements deliveryv1.DeliveryServiceServer.
type Server struct {
	deliveryv1.UnimplementedDeliveryServiceServer
	App *app.App
}

// CreateMessage implements the RPC.
func (s *Server) CreateMessage(ctx context.Context, r *deliveryv1.CreateMessageRequest) (*deliveryv1.Message, error) {
	// The sender sees their own message in full.
	return s.App.SendRendered(ctx, app.SendRequest{
		Parent: r.GetParent(), Text: r.GetText(), Sensitive: r.GetSensitive(), Attachments: r.GetAttachments(),
		ArtifactType: int(r.GetArtifact().GetType()), ArtifactRef: r.GetArtifact().GetRef(), RequestID: r.GetRequestId(),
	})
}

// GetMessage implements the RPC.
func (s *Server) GetMessage(ctx context.Context, r *deliveryv1.GetMessageRequest) (*deliveryv1.Message, error) {
	return s.App.Get(ctx, r.GetName())
}

// ListMessages implements the RPC.
func (s *Server) ListMessages(ctx context.Context, r *deliveryv1.ListMessagesRequest) (*deliveryv1.ListMessagesResponse, error) {
	msgs, next, err := s.App.List(ctx, r.GetParent(), int(r.GetPageSize()), r.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &deliveryv1.ListMessagesResponse{Messages: msgs, NextPageToken: next}, nil
}

// MarkMessagesDelivered implements the RPC.
func (s *Server) MarkMessagesDelivered(ctx context.Context, r *deliveryv1.MarkMessagesDeliveredRequest) (*deliveryv1.MarkMessagesDeliveredResponse, error) {
	n, err := s.App.MarkDelivered(ctx, r.GetParent(), r.GetUpToSeq())
	if err != nil {
		return nil, err
	}
	return &deliveryv1.MarkMessagesDeliveredResponse{DeliveredSeq: n}, nil
}

// ListArtifacts implements the RPC.
func (s *Server) ListArtifacts(ctx context.Context, r *deliveryv1.ListArtifactsRequest) (*deliveryv1.ListArtifactsResponse, error) {
	list, err := s.App.ListArtifacts(ctx, r.GetParent(), int(r.GetType()), int(r.GetPageSize()))
	if err != nil {
		return nil, err
	}
	out := &deliveryv1.ListArtifactsResponse{Artifacts: make([]*artifactv1.Artifact, 0, len(list))}
	for _, a := range list {
		out.Artifacts = append(out.Artifacts, app.ArtifactToProto(a))
	}
	return out, nil
}
