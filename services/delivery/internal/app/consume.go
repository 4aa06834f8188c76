package app

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// HandleConversationRead is the durable consumer of conversation.read: a
// participant's read watermark turns the other side's messages READ.
func (a *App) HandleConversationRead(ctx context.Context, m jetstream.Msg) error {
	var e conversationv1.ConversationRead
	if err := proto.Unmarshal(m.Data(), &e); err != nil {
		return fmt.Errorf("%w: %v", natsx.ErrPoison, err)
	}
	p, ok := ids.Parse(e.GetConversation(), "conversations")
	if !ok || e.GetMeta().GetPractice() == "" {
		return fmt.Errorf("%w: conversation name", natsx.ErrPoison)
	}
	return a.ApplyRead(ctx, e.GetMeta().GetPractice(), p[0], e.GetReader(), e.GetReaderRole(), e.GetUpToSeq())
}
