package app

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/attachment/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// HandleMessageCreated is the durable consumer of delivery's
// message.created: it records which messages carry which attachments, and
// whether they are sensitive. Idempotent: a replay records nothing new.
func (a *App) HandleMessageCreated(ctx context.Context, m jetstream.Msg) error {
	var e deliveryv1.MessageCreated
	if err := proto.Unmarshal(m.Data(), &e); err != nil {
		return fmt.Errorf("%w: %v", natsx.ErrPoison, err)
	}
	return a.RecordLinks(ctx, &e)
}

// RecordLinks records the attachments of a created message.
func (a *App) RecordLinks(ctx context.Context, e *deliveryv1.MessageCreated) error {
	practice, msg := e.GetMeta().GetPractice(), e.GetMessage()
	if _, ok := ids.Parse(msg.GetName(), "conversations", "messages"); !ok || practice == "" {
		return fmt.Errorf("%w: message created without a practice or a message name", natsx.ErrPoison)
	}
	at := msg.GetCreateTime().AsTime()
	if msg.GetCreateTime() == nil {
		at = e.GetMeta().GetTime().AsTime()
	}
	links := make([]domain.Link, 0, len(msg.GetAttachments()))
	for _, ref := range msg.GetAttachments() {
		p, ok := ids.Parse(ref.GetAttachment(), "attachments")
		if !ok {
			a.log.Warn("message names a malformed attachment; skipped", zap.String(logkeys.Practice, practice),
				zap.String(logkeys.Message, msg.GetName()))
			continue
		}
		links = append(links, domain.Link{Practice: practice, AttachmentID: p[0], Message: msg.GetName(),
			Sender: msg.GetSender(), Sensitive: msg.GetSensitive(), CreateTime: at})
	}
	if len(links) == 0 {
		return nil
	}
	if err := a.repo.AddLinks(ctx, links...); err != nil {
		return err
	}
	a.linked.fire()
	return nil
}
