package app

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	artifactv1 "github.com/clinicchat/clinicchat/proto/clinicchat/artifact/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
)

// ts is t as a Timestamp, nil for the zero time (not yet delivered or
// read): allocated only when set.
func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// ToProto renders a stored message in full (before the viewer rules).
func ToProto(m domain.Message) *deliveryv1.Message {
	out := &deliveryv1.Message{
		Name:              m.Name(),
		Sender:            m.Sender,
		SenderRole:        m.SenderRole,
		SenderDisplayName: m.SenderDisplayName,
		Text:              m.Text,
		Sensitive:         m.Sensitive,
		Status:            deliveryv1.Message_Status(m.Status),
		CreateTime:        timestamppb.New(m.CreateTime),
		DeliverTime:       ts(m.DeliverTime),
		ReadTime:          ts(m.ReadTime),
		RequestId:         m.RequestID,
		Seq:               int32(m.Seq),
		ReadBy:            m.ReadBy,
	}
	for _, a := range m.Extras.Attachments {
		out.Attachments = append(out.Attachments, &deliveryv1.Message_AttachmentRef{
			Attachment: a.Name, Filename: a.Filename, ContentType: a.ContentType, SizeBytes: int32(a.SizeBytes)})
	}
	if a := m.Extras.Artifact; a != nil {
		out.Artifact = ArtifactToProto(*a)
	}
	return out
}

// ArtifactToProto renders an artifact card.
func ArtifactToProto(a domain.Artifact) *artifactv1.Artifact {
	return &artifactv1.Artifact{Type: artifactv1.Artifact_Type(a.Type), Ref: a.Ref,
		Preview: &artifactv1.ArtifactPreview{Title: a.Title, Subtitle: a.Subtitle, Date: a.Date, Amount: a.Amount}}
}
