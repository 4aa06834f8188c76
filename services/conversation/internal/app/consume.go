package app

import (
	"context"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protowire"
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
	if d, ok := readMessageCreated(data); ok {
		return d, nil
	}
	return unmarshalMessageCreated(data)
}

// unmarshalMessageCreated is decodeMessageCreated by unmarshalling the
// event (without its meta when SplitMeta reads it): any shape
// readMessageCreated does not take, and the reading it is held to.
func unmarshalMessageCreated(data []byte) (domain.MessageApplied, error) {
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

// readMessageCreated is decodeMessageCreated of the usual event read from
// the wire, without unmarshalling it: the meta first (eventwire.SplitMeta),
// then the Message once and the patient, each field of the Message at most
// once with its own wire type, every string UTF-8, and no attachments,
// artifact or receipt times. ok is false for any other event, and for one
// the projection would refuse: decodeMessageCreated then unmarshals it, which
// decides as before. It makes the strings the projection keeps (the sender,
// the preview's text) and the name's, not the event's objects and others.
func readMessageCreated(data []byte) (domain.MessageApplied, bool) {
	head, rest, ok := eventwire.SplitMeta(data, "", "message.send") // the action is not used: not copied
	if !ok || head.Practice == "" {
		return domain.MessageApplied{}, false
	}
	var msg []byte
	var seen [4]bool
	for b := rest; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num < 2 || num > 3 || typ != protowire.BytesType || seen[num] {
			return domain.MessageApplied{}, false
		}
		seen[num] = true
		v, m := protowire.ConsumeBytes(b[n:])
		if m < 0 || (num == 3 && !utf8.Valid(v)) {
			return domain.MessageApplied{}, false
		}
		if num == 2 {
			msg = v
		}
		b = b[n+m:]
	}
	var (
		name, sender, role, text []byte
		sensitive                bool
		seq                      int32
		created                  = time.Unix(0, 0).UTC() // AsTime of no time
		fields                   [17]bool
	)
	for b := msg; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num < 1 || num > 16 || fields[num] {
			return domain.MessageApplied{}, false
		}
		fields[num] = true
		b = b[n:]
		switch num {
		case 1, 2, 3, 4, 13, 15, 16: // strings
			if typ != protowire.BytesType {
				return domain.MessageApplied{}, false
			}
			v, m := protowire.ConsumeBytes(b)
			if m < 0 || !utf8.Valid(v) {
				return domain.MessageApplied{}, false
			}
			switch num {
			case 1:
				name = v
			case 2:
				sender = v
			case 3:
				role = v
			case 4:
				text = v
			}
			b = b[m:]
		case 5, 6, 9, 14: // sensitive, locked, status, seq
			if typ != protowire.VarintType {
				return domain.MessageApplied{}, false
			}
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return domain.MessageApplied{}, false
			}
			switch num {
			case 5:
				sensitive = v != 0
			case 14:
				seq = int32(v)
			}
			b = b[m:]
		case 10: // create_time
			if typ != protowire.BytesType {
				return domain.MessageApplied{}, false
			}
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return domain.MessageApplied{}, false
			}
			secs, nanos, ok := eventwire.TimestampParts(v)
			if !ok {
				return domain.MessageApplied{}, false
			}
			created = time.Unix(secs, int64(nanos)).UTC()
			b = b[m:]
		default: // attachments, artifact, deliver and read times
			return domain.MessageApplied{}, false
		}
	}
	p, ok := ids.Parse(string(name), "conversations", "messages")
	if !ok {
		return domain.MessageApplied{}, false
	}
	view := deliveryv1.Message{Sensitive: sensitive}
	if !sensitive {
		view.Text = string(text)
	}
	return domain.MessageApplied{
		Practice:       head.Practice,
		ConversationID: p[0],
		Seq:            int64(seq),
		FromPatient:    string(role) == "patient",
		Sender:         string(sender),
		Time:           created,
		Preview:        messageview.Preview(&view),
	}, true
}
