// Package adapters implements the delivery service's ports over gRPC. Every
// call runs as the caller (the token is forwarded), so the other service
// authorizes the same person.
package adapters

import (
	"context"

	artifactv1 "github.com/clinicchat/clinicchat/proto/clinicchat/artifact/v1"
	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/app"
	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/ids"
)

// Conversations is the conversation service.
type Conversations struct {
	Client conversationv1.ConversationServiceClient
}

// Resolve implements app.Conversations.
func (c Conversations) Resolve(ctx context.Context, id string) (app.ConversationRef, error) {
	conv, err := c.Client.ResolveConversation(ctx, &conversationv1.ResolveConversationRequest{Name: "conversations/" + id})
	if err != nil {
		return app.ConversationRef{}, errs.FromStatus(err)
	}
	p, ok := ids.Parse(conv.GetPatient(), "patients")
	if !ok {
		return app.ConversationRef{}, errs.NotFound("Conversation not found")
	}
	return app.ConversationRef{ID: id, PatientID: p[0]}, nil
}

// Patients is the preferences service.
type Patients struct {
	Client preferencesv1.PreferencesServiceClient
}

// Status implements app.Patients.
func (p Patients) Status(ctx context.Context, id string) (app.PatientStatus, error) {
	pat, err := p.Client.GetPatient(ctx, &preferencesv1.GetPatientRequest{Name: "patients/" + id})
	if err != nil {
		return app.PatientStatus{}, errs.FromStatus(err)
	}
	return app.PatientStatus{HasPortalAccount: pat.GetHasPortalAccount(), ChatOptIn: pat.GetChatOptIn(),
		DisplayName: pat.GetDisplayName()}, nil
}

// Attachments is the attachment service.
type Attachments struct {
	Client attachmentv1.AttachmentServiceClient
}

// Get implements app.Attachments.
func (a Attachments) Get(ctx context.Context, name string) (app.AttachmentInfo, error) {
	att, err := a.Client.GetAttachment(ctx, &attachmentv1.GetAttachmentRequest{Name: name})
	if err != nil {
		return app.AttachmentInfo{}, errs.FromStatus(err)
	}
	return app.AttachmentInfo{Conversation: att.GetConversation(), AttachmentRef: domain.AttachmentRef{
		Name: att.GetName(), Filename: att.GetFilename(), ContentType: att.GetContentType(), SizeBytes: int64(att.GetSizeBytes())}}, nil
}

// Artifacts is a practice system's ArtifactProvider.
type Artifacts struct {
	Client artifactv1.ArtifactProviderServiceClient
}

func fromRecord(r *artifactv1.ArtifactRecord) domain.Artifact {
	a := r.GetArtifact()
	return domain.Artifact{Type: int(a.GetType()), Ref: a.GetRef(), Title: a.GetPreview().GetTitle(),
		Subtitle: a.GetPreview().GetSubtitle(), Date: a.GetPreview().GetDate(), Amount: a.GetPreview().GetAmount()}
}

// Get implements app.Artifacts.
func (a Artifacts) Get(ctx context.Context, practice, patientID string, typ int, ref string) (domain.Artifact, error) {
	r, err := a.Client.GetArtifactRecord(ctx, &artifactv1.GetArtifactRecordRequest{Practice: practice, Patient: "patients/" + patientID,
		Type: artifactv1.Artifact_Type(typ), Ref: ref})
	if err != nil {
		return domain.Artifact{}, errs.FromStatus(err)
	}
	return fromRecord(r), nil
}

// List implements app.Artifacts.
func (a Artifacts) List(ctx context.Context, practice, patientID string, typ int, limit int) ([]domain.Artifact, error) {
	resp, err := a.Client.ListArtifactRecords(ctx, &artifactv1.ListArtifactRecordsRequest{Practice: practice, Patient: "patients/" + patientID,
		Type: artifactv1.Artifact_Type(typ), PageSize: int32(limit)})
	if err != nil {
		return nil, errs.FromStatus(err)
	}
	out := make([]domain.Artifact, 0, len(resp.GetRecords()))
	for _, r := range resp.GetRecords() {
		out = append(out, fromRecord(r))
	}
	return out, nil
}
