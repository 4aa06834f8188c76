// Package grpcapi adapts the conversation application layer to gRPC.
package grpcapi

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/app"
	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
)

// Server implements conversationv1.ConversationServiceServer.
type Server struct {
	conversationv1.UnimplementedConversationServiceServer
	App *app.App
}

func render(c domain.Conversation, err error) (*conversationv1.Conversation, error) {
	if err != nil {
		return nil, err
	}
	return app.ToProto(c), nil
}

// CreateConversation implements the RPC.
func (s *Server) CreateConversation(ctx context.Context, r *conversationv1.CreateConversationRequest) (*conversationv1.Conversation, error) {
	return render(s.App.Create(ctx, r.GetConversation().GetPatient()))
}

// GetConversation implements the RPC.
func (s *Server) GetConversation(ctx context.Context, r *conversationv1.GetConversationRequest) (*conversationv1.Conversation, error) {
	return render(s.App.Get(ctx, r.GetName()))
}

// ResolveConversation implements the RPC: routing fields only.
func (s *Server) ResolveConversation(ctx context.Context, r *conversationv1.ResolveConversationRequest) (*conversationv1.Conversation, error) {
	c, err := s.App.Resolve(ctx, r.GetName())
	if err != nil {
		return nil, err
	}
	return &conversationv1.Conversation{Name: c.Name(), Patient: c.Patient(), State: conversationv1.Conversation_State(c.State),
		LastMessageSeq: int32(c.LastMessageSeq)}, nil
}

// ListConversations implements the RPC.
func (s *Server) ListConversations(ctx context.Context, r *conversationv1.ListConversationsRequest) (*conversationv1.ListConversationsResponse, error) {
	list, next, err := s.App.List(ctx, app.ListRequest{Query: r.GetQuery(), Archived: r.GetArchived(), Names: r.GetNames(),
		PageSize: int(r.GetPageSize()), PageToken: r.GetPageToken(), AwaitingReply: r.GetAwaitingReply(), Assignee: r.GetAssignee()})
	if err != nil {
		return nil, err
	}
	out := &conversationv1.ListConversationsResponse{NextPageToken: next}
	for _, c := range list {
		out.Conversations = append(out.Conversations, app.ToProto(c))
	}
	return out, nil
}

func flag(b bool) *bool { return &b }

// PinConversation implements the RPC.
func (s *Server) PinConversation(ctx context.Context, r *conversationv1.PinConversationRequest) (*conversationv1.Conversation, error) {
	return render(s.App.SetFlags(ctx, r.GetName(), "conversation.pin", domain.UserFlags{Pinned: flag(true)}))
}

// UnpinConversation implements the RPC.
func (s *Server) UnpinConversation(ctx context.Context, r *conversationv1.UnpinConversationRequest) (*conversationv1.Conversation, error) {
	return render(s.App.SetFlags(ctx, r.GetName(), "conversation.unpin", domain.UserFlags{Pinned: flag(false)}))
}

// MuteConversation implements the RPC.
func (s *Server) MuteConversation(ctx context.Context, r *conversationv1.MuteConversationRequest) (*conversationv1.Conversation, error) {
	return render(s.App.SetFlags(ctx, r.GetName(), "conversation.mute", domain.UserFlags{Muted: flag(true)}))
}

// UnmuteConversation implements the RPC.
func (s *Server) UnmuteConversation(ctx context.Context, r *conversationv1.UnmuteConversationRequest) (*conversationv1.Conversation, error) {
	return render(s.App.SetFlags(ctx, r.GetName(), "conversation.unmute", domain.UserFlags{Muted: flag(false)}))
}

// MarkConversationRead implements the RPC.
func (s *Server) MarkConversationRead(ctx context.Context, r *conversationv1.MarkConversationReadRequest) (*conversationv1.Conversation, error) {
	return render(s.App.MarkRead(ctx, r.GetName(), r.GetUpTo()))
}

// AssignConversation implements the RPC.
func (s *Server) AssignConversation(ctx context.Context, r *conversationv1.AssignConversationRequest) (*conversationv1.Conversation, error) {
	return render(s.App.Assign(ctx, r.GetName(), r.GetAssignee()))
}

// ListStaff implements the RPC.
func (s *Server) ListStaff(ctx context.Context, r *conversationv1.ListStaffRequest) (*conversationv1.ListStaffResponse, error) {
	list, next, err := s.App.ListStaff(ctx, int(r.GetPageSize()), r.GetPageToken())
	if err != nil {
		return nil, err
	}
	out := &conversationv1.ListStaffResponse{NextPageToken: next}
	for _, m := range list {
		out.Staff = append(out.Staff, &conversationv1.StaffMember{Name: m.User, DisplayName: m.ShownName(), Role: m.Role,
			UpdateTime: timestamppb.New(m.UpdateTime)})
	}
	return out, nil
}
