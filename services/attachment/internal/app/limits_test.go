package app_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/clinicchat/clinicchat/services/attachment/internal/app"
	"github.com/clinicchat/clinicchat/services/attachment/internal/domain"
	tf "github.com/clinicchat/clinicchat/services/attachment/internal/testfiles"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// TestNeverAttachedUploadsHaveAQuota: uploads no message carries count
// against a per-identity quota (a patient wrote 8 × 25 MiB of them in a
// second and could go on until the disk was full); past it the upload is
// RESOURCE_EXHAUSTED with a retry delay, and attaching one frees its room.
func TestNeverAttachedUploadsHaveAQuota(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pdf := tf.PDF()
	f.app.PendingQuota = int64(2*len(pdf)) + 1
	patient := f.as(t, "p1", auth.RolePatient, 0)
	first := f.upload(t, patient, pdf)
	f.upload(t, patient, pdf)
	_, err := f.app.Upload(patient, app.UploadHeader{Conversation: "conversations/c1", Filename: "more.pdf"},
		&chunks{data: pdf, n: 1000, end: io.EOF})
	var e *errs.Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, codes.ResourceExhausted, e.Code)
	require.Equal(t, app.LimitPendingUploads, e.Meta[errs.MetaLimit])
	require.Positive(t, e.RetryAfter)

	// Another identity has its own quota.
	f.upload(t, f.as(t, "dr", auth.RoleDentist, 0), pdf)

	// Sending one in a message frees its room.
	require.NoError(t, f.app.RecordLinks(context.Background(), link(first, "m1", "patients/p1", false)))
	f.upload(t, patient, pdf)
}

// TestNeverAttachedUploadsAreRemovedAfterADay: the sweeper removes uploads
// no message carries once they are older than the TTL (row and bytes), and
// keeps those a message carries.
func TestNeverAttachedUploadsAreRemovedAfterADay(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	dr := f.as(t, "dr", auth.RoleDentist, 0)
	kept := f.upload(t, dr, tf.PDF())
	gone := f.upload(t, dr, tf.PDF())
	require.NoError(t, f.app.RecordLinks(context.Background(), link(kept, "m1", "users/dr", false)))

	n, err := f.app.SweepUnattached(context.Background(), 24*time.Hour)
	require.NoError(t, err)
	require.Zero(t, n, "nothing is a day old yet")

	// A TTL in the past makes both "older than a day".
	n, err = f.app.SweepUnattached(context.Background(), -time.Minute)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	_, err = f.app.Get(dr, gone.Name())
	require.ErrorIs(t, err, domain.ErrNotFound)
	_, err = f.app.Get(dr, kept.Name())
	require.NoError(t, err)
	var files []string
	require.NoError(t, filepath.WalkDir(f.blobDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, filepath.Base(p))
		}
		return err
	}))
	require.Contains(t, files, kept.ID)
	require.NotContains(t, files, gone.ID)
}
