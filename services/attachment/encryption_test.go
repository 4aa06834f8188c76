package attachment_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"image"
	_ "image/jpeg"
	_ "image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/attachment"
	tf "github.com/clinicchat/clinicchat/services/attachment/internal/testfiles"
)

// TestBlobOnDiskHoldsNoPlaintext: what the attachment service writes to its
// blob directory holds none of the file's bytes, and downloads give them back.
func TestBlobOnDiskHoldsNoPlaintext(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	secret := "Patient p1: periapical abscess on 36, prescribed amoxicillin 500 mg. "
	data := append(tf.PDF(), []byte(strings.Repeat(secret, 3000))...) // ~210 KiB: several chunks
	att, err := e.upload(e.staff(t), "conversations/c1", "referral.pdf", "application/pdf", bytes.NewReader(data))
	require.NoError(t, err)

	files := e.blobFiles(t)
	require.Len(t, files, 1)
	raw, err := os.ReadFile(files[0])
	require.NoError(t, err)
	require.NotContains(t, string(raw), "periapical")
	require.NotContains(t, string(raw), "%PDF")
	require.False(t, bytes.Contains(raw, data[:64]))

	_, got, err := e.download(e.staff(t), att.GetName())
	require.NoError(t, err)
	require.Equal(t, data, got)
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// TestJPEGWithGPSDownloadedWithoutIt: a patient's photo with an EXIF GPS
// position, XMP, IPTC and a comment is served without them, pixels intact,
// and the recorded size and SHA-256 are those of what is served.
func TestJPEGWithGPSDownloadedWithoutIt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, tc := range []struct {
		name, ctype string
		clean, in   []byte
	}{
		{"photo.jpg", "image/jpeg", tf.JPEG(), tf.JPEGWithMetadata()},
		{"photo.png", "image/png", tf.PNG(), tf.PNGWithMetadata()},
	} {
		require.Contains(t, string(tc.in), tf.GPSMarker)
		att, err := e.upload(e.as(t, "p1", "patient", 0), "conversations/c1", tc.name, tc.ctype, bytes.NewReader(tc.in))
		require.NoError(t, err, tc.name)

		_, got, err := e.download(e.staff(t), att.GetName())
		require.NoError(t, err)
		require.NotContains(t, string(got), tf.GPSMarker, tc.name)
		require.NotContains(t, string(got), "Exif\x00\x00", tc.name)
		require.Equal(t, int32(len(got)), att.GetSizeBytes())
		require.Equal(t, sha(got), att.GetSha256(), "the stored hash is of what is served")
		want, _, err := image.Decode(bytes.NewReader(tc.clean))
		require.NoError(t, err)
		gotImg, _, err := image.Decode(bytes.NewReader(got))
		require.NoError(t, err)
		require.Equal(t, want, gotImg, "pixels are not re-encoded")
	}
}

// TestPlaintextBlobFromBeforeEncryptionDownloads: a blob written in
// plaintext by an earlier version is still served (and still checked
// against its recorded SHA-256).
func TestPlaintextBlobFromBeforeEncryptionDownloads(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	data := tf.PDF()
	att, err := e.upload(e.staff(t), "conversations/c1", "referral.pdf", "application/pdf", bytes.NewReader(data))
	require.NoError(t, err)
	files := e.blobFiles(t)
	require.NoError(t, os.WriteFile(files[0], data, 0o600)) // as today's main stored it
	_, got, err := e.download(e.staff(t), att.GetName())
	require.NoError(t, err)
	require.Equal(t, data, got)
}

// TestRewrapSubcommandRotatesTheKEK: after rotation to a new KEK (the old
// one given as previous) every blob is re-wrapped and opens with the new
// KEK alone.
func TestRewrapSubcommandRotatesTheKEK(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	data := tf.PDF()
	_, err := e.upload(e.staff(t), "conversations/c1", "referral.pdf", "application/pdf", bytes.NewReader(data))
	require.NoError(t, err)
	oldKEK := filepath.Join(filepath.Dir(e.blobDir), "keys", "attachment.kek")
	newKEK := filepath.Join(t.TempDir(), "new.kek")
	_, err = attachment.EnsureDevKEK(newKEK)
	require.NoError(t, err)

	n, err := attachment.Rewrap(e.blobDir, attachment.Encryption{KEKFile: newKEK, PreviousKEKFiles: oldKEK})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NoError(t, os.Remove(oldKEK))
	n, err = attachment.Rewrap(e.blobDir, attachment.Encryption{KEKFile: newKEK})
	require.NoError(t, err, "the new KEK alone opens every blob's header")
	require.Zero(t, n)
}
