package app_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/delivery/internal/app"
	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// Hand-written fakes for the ports.
type fakeConversations map[string]app.ConversationRef

func (f fakeConversations) Resolve(_ context.Context, id string) (app.ConversationRef, error) {
	c, ok := f[id]
	if !ok {
		return c, errs.NotFound("Conversation not found")
	}
	return c, nil
}

type fakePatients map[string]*app.PatientStatus

func (f fakePatients) Status(_ context.Context, id string) (app.PatientStatus, error) {
	p, ok := f[id]
	if !ok {
		return app.PatientStatus{}, errs.NotFound("Patient not found")
	}
	return *p, nil
}

type fakeArtifacts struct{}

func (fakeArtifacts) Get(_ context.Context, _, _ string, typ int, ref string) (domain.Artifact, error) {
	if ref != "appt-1" {
		return domain.Artifact{}, errs.NotFound("No such record for this patient")
	}
	return domain.Artifact{Type: typ, Ref: ref, Title: "Cleaning with Dr. Lee", Date: "2026-12-01"}, nil
}

// List answers for any patient, as the demo provider does: the caller must
// check the patient first.
func (fakeArtifacts) List(context.Context, string, string, int, int) ([]domain.Artifact, error) {
	return []domain.Artifact{{Type: 1, Ref: "appt-1", Title: "Cleaning with Dr. Lee"}}, nil
}

type fixture struct {
	app      *app.App
	repo     *store.Store
	db       *sqldb.DB
	patients fakePatients
	staff    context.Context
	patient  context.Context
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	db := testkit.OpenDB(t, testkit.Backends()[0])
	repo, err := store.New(context.Background(), db)
	require.NoError(t, err)
	pats := fakePatients{"pat": {HasPortalAccount: true, ChatOptIn: true}}
	a := app.New(repo, fakeConversations{"c1": {ID: "c1", PatientID: "pat"}}, pats, nil, fakeArtifacts{}, testkit.Logger(t))
	id := func(sub, role string, age time.Duration) context.Context {
		return auth.WithIdentity(context.Background(), auth.Identity{Subject: sub, Role: role, Practice: "p1", AuthTime: time.Now().Add(-age)})
	}
	return fixture{app: a, repo: repo, db: db, patients: pats, staff: id("u1", "dentist", 0), patient: id("pat", "patient", time.Hour)}
}

func TestSendRules(t *testing.T) {
	f := newFixture(t)
	send := func(ctx context.Context, r app.SendRequest) error {
		if r.Parent == "" {
			r.Parent = "conversations/c1"
		}
		_, err := f.app.Send(ctx, r)
		return err
	}
	cases := []struct {
		name   string
		ctx    context.Context
		req    app.SendRequest
		reason string
	}{
		{"empty text alone", f.staff, app.SendRequest{RequestID: "a"}, errs.ReasonInvalidArgument},
		{"no request id", f.staff, app.SendRequest{Text: "hi"}, errs.ReasonInvalidArgument},
		{"11 attachments", f.staff, app.SendRequest{Text: "hi", RequestID: "b", Attachments: make([]string, 11)}, errs.ReasonInvalidArgument},
		{"artifact without a ref", f.staff, app.SendRequest{RequestID: "c", ArtifactType: 1}, errs.ReasonInvalidArgument},
		{"unknown conversation", f.staff, app.SendRequest{Parent: "conversations/nope", Text: "hi", RequestID: "d"}, errs.ReasonNotFound},
		{"malformed parent", f.staff, app.SendRequest{Parent: "threads/c1", Text: "hi", RequestID: "e"}, errs.ReasonInvalidArgument},
		{"unknown artifact", f.staff, app.SendRequest{RequestID: "f", ArtifactType: 1, ArtifactRef: "nope"}, errs.ReasonNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			require.Equal(t, c.reason, errs.Reason(send(c.ctx, c.req)))
		})
	}

	// An artifact alone is a message; its card comes from the provider.
	m, err := f.app.Send(f.staff, app.SendRequest{Parent: "conversations/c1", RequestID: "g", ArtifactType: 1, ArtifactRef: "appt-1"})
	require.NoError(t, err)
	require.Equal(t, "Cleaning with Dr. Lee", m.Extras.Artifact.Title)

	// Opt-out refuses both directions; a retry of an earlier send still answers.
	first, err := f.app.Send(f.staff, app.SendRequest{Parent: "conversations/c1", Text: "before", RequestID: "h"})
	require.NoError(t, err)
	f.patients["pat"].ChatOptIn = false
	require.Equal(t, errs.ReasonChatOptedOut, errs.Reason(send(f.staff, app.SendRequest{Text: "after", RequestID: "i"})))
	require.Equal(t, errs.ReasonChatOptedOut, errs.Reason(send(f.patient, app.SendRequest{Text: "me", RequestID: "j"})))
	again, err := f.app.Send(f.staff, app.SendRequest{Parent: "conversations/c1", Text: "before", RequestID: "h"})
	require.NoError(t, err)
	require.Equal(t, first.Seq, again.Seq)
	require.Equal(t, errs.ReasonRequestIDReused, errs.Reason(send(f.staff, app.SendRequest{Text: "changed", RequestID: "h"})),
		"a refused send that reuses a request id says so")
	f.patients["pat"].ChatOptIn = true
	require.Equal(t, errs.ReasonRequestIDReused, errs.Reason(send(f.staff, app.SendRequest{Text: "changed", RequestID: "h"})),
		"so does one that can go ahead (found inside the write)")
	again, err = f.app.Send(f.staff, app.SendRequest{Parent: "conversations/c1", Text: "before", RequestID: "h"})
	require.NoError(t, err)
	require.Equal(t, first.Seq, again.Seq)
	f.patients["pat"].ChatOptIn = false

	// Losing the portal account stops chat too.
	f.patients["pat"].ChatOptIn, f.patients["pat"].HasPortalAccount = true, false
	require.Equal(t, errs.ReasonNoPortalAccount, errs.Reason(send(f.staff, app.SendRequest{Text: "x", RequestID: "k"})))
	list, err := f.repo.List(context.Background(), "p1", "c1", 0, 100)
	require.NoError(t, err)
	require.Len(t, list, 2, "refusals store nothing")
}

func TestSensitiveMessagesLockUntilStepUp(t *testing.T) {
	f := newFixture(t)
	m, err := f.app.Send(f.staff, app.SendRequest{Parent: "conversations/c1", Text: "results", Sensitive: true, RequestID: "s"})
	require.NoError(t, err)
	got, err := f.app.Get(f.patient, m.Name()) // signed in an hour ago
	require.NoError(t, err)
	require.True(t, got.GetLocked())
	require.Empty(t, got.GetText())
	fresh := auth.WithIdentity(context.Background(), auth.Identity{Subject: "pat", Role: "patient", Practice: "p1", AuthTime: time.Now()})
	got, err = f.app.Get(fresh, m.Name())
	require.NoError(t, err)
	require.False(t, got.GetLocked())
	require.Equal(t, "results", got.GetText())
	got, err = f.app.Get(f.staff, m.Name())
	require.NoError(t, err)
	require.False(t, got.GetLocked(), "staff are never locked out")
}

// Read receipts arriving out of order or twice leave the right final state.
func TestReadReceiptsOutOfOrderAndDuplicated(t *testing.T) {
	f := newFixture(t)
	for i := range 5 {
		_, err := f.app.Send(f.staff, app.SendRequest{Parent: "conversations/c1", Text: "m", RequestID: string(rune('a' + i))})
		require.NoError(t, err)
	}
	for _, upTo := range []int64{4, 2, 4, 5, 3} {
		require.NoError(t, f.app.ApplyRead(context.Background(), "p1", "c1", "patients/pat", "patient", upTo))
	}
	list, err := f.repo.List(context.Background(), "p1", "c1", 0, 10)
	require.NoError(t, err)
	for _, m := range list {
		require.Equal(t, domain.Read, m.Status, "message %d", m.Seq)
		require.Equal(t, "patients/pat", m.ReadBy)
	}
	// A delivery receipt after the read changes nothing.
	_, err = f.app.MarkDelivered(f.patient, "conversations/c1", 5)
	require.NoError(t, err)
	got, err := f.repo.Get(context.Background(), "p1", "c1", 5)
	require.NoError(t, err)
	require.Equal(t, domain.Read, got.Status)
}

// A message carries who wrote it as a person reads it: a staff member's token
// name (none when the token has none), the patient's directory display name.
func TestSenderDisplayName(t *testing.T) {
	f := newFixture(t)
	f.patients["pat"].DisplayName = "Alice Johnson"
	named := auth.WithIdentity(context.Background(), auth.Identity{Subject: "u2", Role: "dentist", Practice: "p1", Name: "Dr. Lee", AuthTime: time.Now()})
	cases := []struct {
		name string
		ctx  context.Context
		want string
	}{
		{"staff with a name claim", named, "Dr. Lee"},
		{"staff without one", f.staff, ""},
		{"the patient", f.patient, "Alice Johnson"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := f.app.Send(c.ctx, app.SendRequest{Parent: "conversations/c1", Text: "hi", RequestID: "n" + string(rune('a'+i))})
			require.NoError(t, err)
			require.Equal(t, c.want, m.SenderDisplayName)
			got, err := f.app.Get(f.staff, m.Name())
			require.NoError(t, err)
			require.Equal(t, c.want, got.GetSenderDisplayName(), "stored with the message")
		})
	}
}

// TestWhitespaceOnlyTextIsEmpty: text of spaces, line breaks or invisible
// characters alone is refused as empty (it was stored as a blank bubble).
func TestWhitespaceOnlyTextIsEmpty(t *testing.T) {
	f := newFixture(t)
	for i, text := range []string{" ", "\n\t  \r\n", "\u00a0\u3000", "\u200b\ufeff "} {
		_, err := f.app.Send(f.staff, app.SendRequest{Parent: "conversations/c1", Text: text, RequestID: fmt.Sprint("ws", i)})
		require.Equal(t, errs.ReasonInvalidArgument, errs.Reason(err), "%q", text)
	}
	// With an artifact, white space alone is stored as no text.
	m, err := f.app.Send(f.staff, app.SendRequest{Parent: "conversations/c1", Text: "  \n", RequestID: "ws-art",
		ArtifactType: 1, ArtifactRef: "appt-1"})
	require.NoError(t, err)
	require.Empty(t, m.Text)
	list, err := f.repo.List(context.Background(), "p1", "c1", 0, 100)
	require.NoError(t, err)
	require.Len(t, list, 1)
}

// TestArtifactsOfUnknownPatientAreNotFound: a patient who is not one of the
// caller's practice (the preferences service does not know them for the
// caller) gets NOT_FOUND, not the practice system's records.
func TestArtifactsOfUnknownPatientAreNotFound(t *testing.T) {
	f := newFixture(t)
	_, err := f.app.ListArtifacts(f.staff, "patients/made-up", 1, 10)
	require.Equal(t, errs.ReasonNotFound, errs.Reason(err))
	arts, err := f.app.ListArtifacts(f.staff, "patients/pat", 1, 10)
	require.NoError(t, err)
	require.Len(t, arts, 1)
}
