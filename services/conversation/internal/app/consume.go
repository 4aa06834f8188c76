package app

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/eventwire"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/policy/messageview"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// HandleMessagesCreated is the durable consumer of delivery's
// message.created, a batch at a time (natsx.ConsumeBatch): one error per
// message. An event that cannot be decoded is poison on its own; the others
// are projected in one transaction (ApplyMessages).
func (a *App) HandleMessagesCreated(ctx context.Context, msgs []jetstream.Msg, practiceName func(string) string) []error {
	errs := make([]error, len(msgs))
	ms := make([]domain.MessageApplied, 0, len(msgs))
	idx := make([]int, 0, len(msgs))
	mctxs := natsx.MessageContexts(ctx)
	for i, m := range msgs {
		d, err := decodeMessageCreated(m.Data())
		if err != nil {
			errs[i] = err
			continue
		}
		if i < len(mctxs) {
			d.Traceparent = telemetry.Traceparent(mctxs[i]) // its events continue its trace
		}
		ms = append(ms, d)
		idx = append(idx, i)
	}
	if len(ms) == 0 {
		return errs
	}
	for j, err := range a.ApplyMessages(ctx, ms, practiceName) {
		errs[idx[j]] = err
	}
	return errs
}

// decodeMessageCreated reads the projection's view of a message.created.
// Its meta is read from the wire (only the practice is used) and the rest
// unmarshalled without it: the meta's other strings are not made.
func decodeMessageCreated(data []byte) (domain.MessageApplied, error) {
	var e deliveryv1.MessageCreated
	head, err := eventwire.Unmarshal(data, &e, "")
	if err != nil {
		return domain.MessageApplied{}, fmt.Errorf("%w: %v", natsx.ErrPoison, err)
	}
	msg := e.GetMessage()
	p, ok := ids.Parse(msg.GetName(), "conversations", "messages")
	if !ok || head.Practice == "" {
		return domain.MessageApplied{}, fmt.Errorf("%w: message name", natsx.ErrPoison)
	}
	return domain.MessageApplied{
		Practice:       head.Practice,
		ConversationID: p[0],
		Seq:            int64(msg.GetSeq()),
		FromPatient:    msg.GetSenderRole() == "patient",
		Sender:         msg.GetSender(),
		Time:           msg.GetCreateTime().AsTime(),
		Preview:        messageview.Preview(msg),
	}, nil
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
