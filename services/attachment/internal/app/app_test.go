package app_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/attachment/internal/adapters"
	"github.com/clinicchat/clinicchat/services/attachment/internal/app"
	"github.com/clinicchat/clinicchat/services/attachment/internal/blob"
	"github.com/clinicchat/clinicchat/services/attachment/internal/domain"
	"github.com/clinicchat/clinicchat/services/attachment/internal/store"
	tf "github.com/clinicchat/clinicchat/services/attachment/internal/testfiles"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// participants is a hand-written Conversations: thread c1 is patient p1's
// in practice "demo".
type participants struct{}

func (participants) Resolve(ctx context.Context, id string) (app.ConversationRef, error) {
	who, _ := auth.FromContext(ctx)
	if id != "c1" || who.Practice != "demo" || (who.IsPatient() && who.Subject != "p1") {
		return app.ConversationRef{}, errs.NotFound("Conversation not found")
	}
	return app.ConversationRef{ID: "c1", PatientID: "p1"}, nil
}

type fixture struct {
	app     *app.App
	blobDir string
	tokens  *testkit.Tokens
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	db := testkit.OpenDB(t, testkit.Backends()[0])
	st, err := store.New(context.Background(), db)
	require.NoError(t, err)
	dir := filepath.Join(t.TempDir(), "blobs")
	bs, err := blob.Open(dir)
	require.NoError(t, err)
	tokens, _ := testkit.NewTokens()
	a := app.New(st, participants{}, adapters.Blobs{Store: bs}, testkit.Logger(t), 5*time.Minute)
	return &fixture{app: a, blobDir: dir, tokens: tokens}
}

// as is a context of a verified caller who signed in authAge ago.
func (f *fixture) as(t *testing.T, subject, role string, authAge time.Duration) context.Context {
	id := f.tokens.Identity(t, subject, role, "demo")
	id.AuthTime = time.Now().Add(-authAge)
	return auth.WithIdentity(context.Background(), id)
}

// chunks yields data in pieces of n bytes, then end (io.EOF for a complete upload).
type chunks struct {
	data []byte
	n    int
	end  error
}

func (c *chunks) Next() ([]byte, error) {
	if len(c.data) == 0 {
		return nil, c.end
	}
	k := min(c.n, len(c.data))
	out := c.data[:k]
	c.data = c.data[k:]
	return out, nil
}

func (f *fixture) upload(t *testing.T, ctx context.Context, data []byte) domain.Attachment {
	t.Helper()
	att, err := f.app.Upload(ctx, app.UploadHeader{Conversation: "conversations/c1", Filename: "result.pdf"},
		&chunks{data: data, n: 1000, end: io.EOF})
	require.NoError(t, err)
	return att
}

func link(attachment domain.Attachment, message, sender string, sensitive bool) *deliveryv1.MessageCreated {
	return &deliveryv1.MessageCreated{
		Meta: &typev1.EventMeta{Id: "e-" + message, Practice: "demo", Time: timestamppb.Now()},
		Message: &deliveryv1.Message{Name: "conversations/c1/messages/" + message, Sender: sender, Sensitive: sensitive,
			Attachments: []*deliveryv1.Message_AttachmentRef{{Attachment: attachment.Name()}}},
	}
}

func TestUnlinkedAttachmentIsLockedForStalePatients(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.app.LinkWait = 20 * time.Millisecond
	att := f.upload(t, f.as(t, "dr", auth.RoleDentist, 0), tf.PDF())

	_, err := f.app.Get(f.as(t, "p1", auth.RolePatient, time.Hour), att.Name())
	require.ErrorIs(t, err, domain.ErrStepUpRequired)
	_, err = f.app.Get(f.as(t, "p1", auth.RolePatient, 0), att.Name())
	require.NoError(t, err)
	_, err = f.app.Get(f.as(t, "dr", auth.RoleDentist, 24*time.Hour), att.Name())
	require.NoError(t, err)

	// A patient's own upload is never locked to them.
	own := f.upload(t, f.as(t, "p1", auth.RolePatient, 0), tf.PDF())
	_, err = f.app.Get(f.as(t, "p1", auth.RolePatient, time.Hour), own.Name())
	require.NoError(t, err)
}

func TestWaitingAccessWakesWhenTheMessageArrives(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.app.LinkWait = time.Minute // the access must answer when the link is recorded, not at this deadline
	att := f.upload(t, f.as(t, "dr", auth.RoleDentist, 0), tf.PDF())
	stale := f.as(t, "p1", auth.RolePatient, time.Hour)

	got := make(chan error, 1)
	go func() {
		_, err := f.app.Get(stale, att.Name())
		got <- err
	}()
	require.NoError(t, f.app.RecordLinks(context.Background(), link(att, "1", "users/dr", false)))
	select {
	case err := <-got:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting access was not woken")
	}

	// A later sensitive message carrying the same file locks it.
	require.NoError(t, f.app.RecordLinks(context.Background(), link(att, "2", "users/dr", true)))
	_, err := f.app.Get(stale, att.Name())
	require.ErrorIs(t, err, domain.ErrStepUpRequired)
}

func TestRecordLinksRefusesPoison(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, e := range []*deliveryv1.MessageCreated{
		{},
		{Meta: &typev1.EventMeta{Practice: "demo"}, Message: &deliveryv1.Message{Name: "bogus"}},
		{Meta: &typev1.EventMeta{}, Message: &deliveryv1.Message{Name: "conversations/c1/messages/1"}},
	} {
		require.ErrorIs(t, f.app.RecordLinks(context.Background(), e), natsx.ErrPoison)
	}
	// A message without attachments, or naming a malformed one, records nothing and is fine.
	ok := &deliveryv1.MessageCreated{Meta: &typev1.EventMeta{Practice: "demo"}, Message: &deliveryv1.Message{
		Name: "conversations/c1/messages/1", Attachments: []*deliveryv1.Message_AttachmentRef{{Attachment: "nope"}}}}
	require.NoError(t, f.app.RecordLinks(context.Background(), ok))
}

func TestInterruptedUploadKeepsNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	cut := errors.New("stream reset")
	_, err := f.app.Upload(f.as(t, "dr", auth.RoleDentist, 0), app.UploadHeader{Conversation: "conversations/c1", Filename: "a.pdf"},
		&chunks{data: bytes.Repeat(tf.PDF(), 100), n: 512, end: cut})
	require.ErrorIs(t, err, cut)
	entries, err := os.ReadDir(filepath.Join(f.blobDir, "tmp"))
	require.NoError(t, err)
	require.Empty(t, entries)
}

func TestDownloadVerifiesBytes(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	staff := f.as(t, "dr", auth.RoleDentist, 0)
	data := bytes.Repeat([]byte("%PDF-1.4\n"), 1000)
	att := f.upload(t, staff, data)

	d, err := f.app.Download(staff, att.Name())
	require.NoError(t, err)
	got, err := io.ReadAll(d.Content)
	require.NoError(t, err)
	require.NoError(t, d.Content.Close())
	require.Equal(t, data, got)

	p := filepath.Join(f.blobDir, att.ID[:2], att.ID)
	bad := bytes.Clone(data)
	bad[10] = 'X'
	require.NoError(t, os.WriteFile(p, bad, 0o600))
	d, err = f.app.Download(staff, att.Name())
	require.NoError(t, err)
	_, err = io.ReadAll(d.Content)
	require.ErrorIs(t, err, app.ErrCorrupt)
	require.NoError(t, d.Content.Close())

	require.NoError(t, os.WriteFile(p, data[:10], 0o600))
	_, err = f.app.Download(staff, att.Name())
	require.ErrorIs(t, err, app.ErrCorrupt)

	require.NoError(t, os.Remove(p))
	_, err = f.app.Download(staff, att.Name())
	require.ErrorIs(t, err, blob.ErrNotFound)
}
