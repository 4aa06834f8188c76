package app

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	artifactv1 "github.com/clinicchat/clinicchat/proto/clinicchat/artifact/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
)

// ToProto renders a stored message in full (before the viewer rules).
func ToProto(m domain.Message) *deliveryv1.Message {
	// The message and its times in one allocation (the times live as long
	// as the message that points to them).
	a := new(messageAlloc)
	out := &a.msg
	out.Name = m.Name()
	out.Sender = m.Sender
	out.SenderRole = m.SenderRole
	out.SenderDisplayName = m.SenderDisplayName
	out.Text = m.Text
	out.Sensitive = m.Sensitive
	out.Status = deliveryv1.Message_Status(m.Status)
	out.CreateTime = a.time(0, m.CreateTime)
	if !m.DeliverTime.IsZero() {
		out.DeliverTime = a.time(1, m.DeliverTime)
	}
	if !m.ReadTime.IsZero() {
		out.ReadTime = a.time(2, m.ReadTime)
	}
	out.RequestId = m.RequestID
	out.Seq = int32(m.Seq)
	out.ReadBy = m.ReadBy
	for _, a := range m.Extras.Attachments {
		out.Attachments = append(out.Attachments, &deliveryv1.Message_AttachmentRef{
			Attachment: a.Name, Filename: a.Filename, ContentType: a.ContentType, SizeBytes: int32(a.SizeBytes)})
	}
	if a := m.Extras.Artifact; a != nil {
		out.Artifact = ArtifactToProto(*a)
	}
	return out
}

// messageAlloc is a rendered message and room for its three times.
type messageAlloc struct {
	msg   deliveryv1.Message
	times [3]timestamppb.Timestamp
}

// time is t in the i-th time, as timestamppb.New gives it.
func (a *messageAlloc) time(i int, t time.Time) *timestamppb.Timestamp {
	ts := &a.times[i]
	ts.Seconds, ts.Nanos = t.Unix(), int32(t.Nanosecond())
	return ts
}

// ArtifactToProto renders an artifact card.
func ArtifactToProto(a domain.Artifact) *artifactv1.Artifact {
	return &artifactv1.Artifact{Type: artifactv1.Artifact_Type(a.Type), Ref: a.Ref,
		Preview: &artifactv1.ArtifactPreview{Title: a.Title, Subtitle: a.Subtitle, Date: a.Date, Amount: a.Amount}}
}
