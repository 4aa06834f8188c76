// Package grpcapi adapts the conversation application layer to gRPC.
package grpcapi

import (
	"context"

	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/app"
	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/errs"
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

func renderTemplate(t domain.Template) *conversationv1.MessageTemplate {
	return &conversationv1.MessageTemplate{Name: t.Name(), Title: t.Title, Text: t.Text, UpdateTime: timestamppb.New(t.UpdateTime)}
}

// ListMessageTemplates implements the RPC: one page holds every template.
func (s *Server) ListMessageTemplates(ctx context.Context, _ *conversationv1.ListMessageTemplatesRequest) (*conversationv1.ListMessageTemplatesResponse, error) {
	list, err := s.App.ListTemplates(ctx)
	if err != nil {
		return nil, err
	}
	out := &conversationv1.ListMessageTemplatesResponse{MessageTemplates: []*conversationv1.MessageTemplate{}}
	for _, t := range list {
		out.MessageTemplates = append(out.MessageTemplates, renderTemplate(t))
	}
	return out, nil
}

// CreateMessageTemplate implements the RPC.
func (s *Server) CreateMessageTemplate(ctx context.Context, r *conversationv1.CreateMessageTemplateRequest) (*conversationv1.MessageTemplate, error) {
	t, err := s.App.CreateTemplate(ctx, r.GetMessageTemplate().GetTitle(), r.GetMessageTemplate().GetText())
	if err != nil {
		return nil, err
	}
	return renderTemplate(t), nil
}

// UpdateMessageTemplate implements the RPC.
func (s *Server) UpdateMessageTemplate(ctx context.Context, r *conversationv1.UpdateMessageTemplateRequest) (*conversationv1.MessageTemplate, error) {
	in := r.GetMessageTemplate()
	var title, text *string
	paths := r.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		if in.GetTitle() != "" {
			paths = append(paths, "title")
		}
		if in.GetText() != "" {
			paths = append(paths, "text")
		}
	}
	for _, p := range paths {
		switch p {
		case "title":
			title = &in.Title
		case "text":
			text = &in.Text
		case "name", "update_time":
			// Identify the template or are output only.
		default:
			return nil, errs.InvalidArgument("updateMask: %q cannot be changed; use title or text", p)
		}
	}
	t, err := s.App.UpdateTemplate(ctx, in.GetName(), title, text)
	if err != nil {
		return nil, err
	}
	return renderTemplate(t), nil
}

// DeleteMessageTemplate implements the RPC.
func (s *Server) DeleteMessageTemplate(ctx context.Context, r *conversationv1.DeleteMessageTemplateRequest) (*emptypb.Empty, error) {
	if err := s.App.DeleteTemplate(ctx, r.GetName()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}
