package app

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/policy/messageview"
)

// HandleMessageCreated is the durable consumer of delivery's message.created.
func (a *App) HandleMessageCreated(ctx context.Context, m jetstream.Msg, practiceName func(string) string) error {
	var e deliveryv1.MessageCreated
	if err := proto.Unmarshal(m.Data(), &e); err != nil {
		return fmt.Errorf("%w: %v", natsx.ErrPoison, err)
	}
	msg := e.GetMessage()
	p, ok := ids.Parse(msg.GetName(), "conversations", "messages")
	if !ok || e.GetMeta().GetPractice() == "" {
		return fmt.Errorf("%w: message name", natsx.ErrPoison)
	}
	practice := e.GetMeta().GetPractice()
	return a.ApplyMessage(ctx, domain.MessageApplied{
		Practice:       practice,
		ConversationID: p[0],
		Seq:            int64(msg.GetSeq()),
		FromPatient:    msg.GetSenderRole() == "patient",
		Sender:         msg.GetSender(),
		Time:           msg.GetCreateTime().AsTime(),
		Preview:        messageview.Preview(msg),
	}, practiceName(practice))
}

// HandlePatientUpserted keeps display names in step with the directory.
func (a *App) HandlePatientUpserted(ctx context.Context, m jetstream.Msg) error {
	var e preferencesv1.PatientUpserted
	if err := proto.Unmarshal(m.Data(), &e); err != nil {
		return fmt.Errorf("%w: %v", natsx.ErrPoison, err)
	}
	p, ok := ids.Parse(e.GetPatient().GetName(), "patients")
	if !ok {
		return fmt.Errorf("%w: patient name", natsx.ErrPoison)
	}
	return a.RenamePatient(ctx, e.GetMeta().GetPractice(), p[0], e.GetPatient().GetDisplayName())
}
