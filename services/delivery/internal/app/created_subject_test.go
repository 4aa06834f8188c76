package app_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/delivery/internal/app"
	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

type oneAttachment struct{}

func (oneAttachment) Get(_ context.Context, name string) (app.AttachmentInfo, error) {
	return app.AttachmentInfo{Conversation: "conversations/c1", AttachmentRef: domain.AttachmentRef{Name: name, Filename: "x.png"}}, nil
}

// A message without attachments is published on its thread's subject with
// natsx.NoAttachments after it, so that the attachment service's consumer
// (natsx.CreatedWithAttachments) is not delivered it; one with attachments
// on the thread's subject.
func TestMessageCreatedSubjectSaysWhetherTheMessageHasAttachments(t *testing.T) {
	ctx := context.Background()
	db := testkit.OpenDB(t, testkit.Backends()[0])
	repo, err := store.New(ctx, db)
	require.NoError(t, err)
	a := app.New(repo, fakeConversations{"c1": {ID: "c1", PatientID: "pat"}},
		fakePatients{"pat": {HasPortalAccount: true, ChatOptIn: true}}, oneAttachment{}, fakeArtifacts{}, testkit.Logger(t))
	staff := auth.WithIdentity(ctx, auth.Identity{Subject: "u1", Role: "dentist", Practice: "p1"})
	_, err = a.Send(staff, app.SendRequest{Parent: "conversations/c1", Text: "plain", RequestID: "a"})
	require.NoError(t, err)
	_, err = a.Send(staff, app.SendRequest{Parent: "conversations/c1", Text: "x-ray", RequestID: "b", Attachments: []string{"attachments/x"}})
	require.NoError(t, err)

	rows, err := db.Query(ctx, `SELECT subject FROM outbox WHERE subject LIKE '`+natsx.SubjectMessageCreated+`.%' ORDER BY seq`)
	require.NoError(t, err)
	defer rows.Close()
	var got []string
	for rows.Next() {
		var s string
		require.NoError(t, rows.Scan(&s))
		got = append(got, s)
	}
	require.NoError(t, rows.Err())
	thread := natsx.Tenant(natsx.SubjectMessageCreated, "p1", "patients/pat")
	require.Equal(t, []string{thread + "." + natsx.NoAttachments, thread}, got)
}
