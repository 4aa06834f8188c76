package blob_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/attachment/internal/blob"
	"github.com/clinicchat/clinicchat/services/platform/ids"
)

func newKey(t *testing.T) []byte {
	k := make([]byte, 32)
	_, err := rand.Read(k)
	require.NoError(t, err)
	return k
}

func keyring(t *testing.T, current []byte, previous ...[]byte) *blob.Keyring {
	r, err := blob.NewKeyring(current, previous...)
	require.NoError(t, err)
	return r
}

// plaintext is recognisable health data several chunks long.
func plaintext(n int) []byte {
	return bytes.Repeat([]byte("PATIENT alice: panoramic X-ray, tooth 36. "), n/42+1)[:n]
}

func commit(t *testing.T, s *blob.Store, data []byte, writes int) string {
	tmp, err := s.Create()
	require.NoError(t, err)
	step := len(data)/writes + 1
	for off := 0; off < len(data); off += step {
		_, err := tmp.Write(data[off:min(off+step, len(data))])
		require.NoError(t, err)
	}
	id := ids.New()
	require.NoError(t, tmp.Commit(id))
	return id
}

func readAll(t *testing.T, s *blob.Store, id string) ([]byte, int64, error) {
	rc, size, err := s.Read(id)
	if err != nil {
		return nil, 0, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return b, size, err
}

func blobPath(dir, id string) string { return filepath.Join(dir, id[:2], id) }

// TestBlobOnDiskHoldsNoPlaintext: an encrypted store's file holds none of
// the attachment's bytes, and reads back exactly.
func TestBlobOnDiskHoldsNoPlaintext(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 1, blob.ChunkSize - 1, blob.ChunkSize, blob.ChunkSize + 1, 3*blob.ChunkSize + 17} {
		dir := t.TempDir()
		s, err := blob.OpenEncrypted(dir, keyring(t, newKey(t)))
		require.NoError(t, err)
		data := plaintext(n)
		id := commit(t, s, data, 7)

		raw, err := os.ReadFile(blobPath(dir, id))
		require.NoError(t, err)
		require.NotContains(t, string(raw), "PATIENT alice", "size %d", n)
		if n >= 42 {
			require.False(t, bytes.Contains(raw, data[:32]), "size %d", n)
		}
		got, size, err := readAll(t, s, id)
		require.NoError(t, err, "size %d", n)
		require.Equal(t, int64(n), size)
		require.True(t, bytes.Equal(data, got), "size %d", n)
	}
}

func TestEncryptedBlobRefusesTampering(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := blob.OpenEncrypted(dir, keyring(t, newKey(t)))
	require.NoError(t, err)
	data := plaintext(3*blob.ChunkSize + 100)
	id := commit(t, s, data, 3)
	p := blobPath(dir, id)
	orig, err := os.ReadFile(p)
	require.NoError(t, err)

	cases := map[string][]byte{
		"a flipped byte":                      func() []byte { b := bytes.Clone(orig); b[len(b)/2] ^= 1; return b }(),
		"truncated at a chunk boundary":       orig[:len(orig)-(100+16)],
		"truncated within a chunk":            orig[:len(orig)-10],
		"two chunks swapped":                  swapChunks(orig),
		"a chunk appended":                    append(bytes.Clone(orig), orig[len(orig)-116:]...),
		"header of another blob (another id)": nil,
	}
	other := commit(t, s, data, 1)
	ob, err := os.ReadFile(blobPath(dir, other))
	require.NoError(t, err)
	cases["header of another blob (another id)"] = ob
	for name, b := range cases {
		require.NoError(t, os.WriteFile(p, b, 0o600))
		got, _, err := readAll(t, s, id)
		require.Error(t, err, name)
		require.False(t, bytes.Equal(got, data), name)
	}
}

func swapChunks(orig []byte) []byte {
	b := bytes.Clone(orig)
	const h, c = 76, blob.ChunkSize + 16
	copy(b[h:h+c], orig[h+c:h+2*c])
	copy(b[h+c:h+2*c], orig[h:h+c])
	return b
}

// TestPlaintextBlobsFromBeforeEncryptionStayReadable: files written by a
// store without a keyring (today's main) are served as they are.
func TestPlaintextBlobsFromBeforeEncryptionStayReadable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	plain, err := blob.Open(dir)
	require.NoError(t, err)
	id := commit(t, plain, []byte("an old PDF"), 1)
	s, err := blob.OpenEncrypted(dir, keyring(t, newKey(t)))
	require.NoError(t, err)
	got, size, err := readAll(t, s, id)
	require.NoError(t, err)
	require.Equal(t, int64(10), size)
	require.Equal(t, "an old PDF", string(got))
	changed, err := s.Rewrap(id)
	require.NoError(t, err)
	require.False(t, changed, "nothing to re-wrap in a plaintext blob")
}

// TestRewrapRotatesTheKEKWithoutReencrypting: after rotation the blob's
// chunks are byte for byte the same, only the header changed, and the old
// KEK is no longer needed.
func TestRewrapRotatesTheKEKWithoutReencrypting(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	oldKEK, newKEK := newKey(t), newKey(t)
	s, err := blob.OpenEncrypted(dir, keyring(t, oldKEK))
	require.NoError(t, err)
	data := plaintext(2*blob.ChunkSize + 5)
	ids := []string{commit(t, s, data, 2), commit(t, s, data[:100], 1)}
	before, err := os.ReadFile(blobPath(dir, ids[0]))
	require.NoError(t, err)

	onlyNew, err := blob.OpenEncrypted(dir, keyring(t, newKEK))
	require.NoError(t, err)
	_, _, err = readAll(t, onlyNew, ids[0])
	require.ErrorIs(t, err, blob.ErrUnknownKEK)

	rot, err := blob.OpenEncrypted(dir, keyring(t, newKEK, oldKEK))
	require.NoError(t, err)
	n, err := rot.RewrapAll()
	require.NoError(t, err)
	require.Equal(t, 2, n)
	n, err = rot.RewrapAll()
	require.NoError(t, err)
	require.Zero(t, n, "already under the current KEK")

	after, err := os.ReadFile(blobPath(dir, ids[0]))
	require.NoError(t, err)
	require.Equal(t, len(before), len(after))
	require.NotEqual(t, before[:76], after[:76], "the header changed")
	require.Equal(t, before[76:], after[76:], "the encrypted chunks did not")

	got, _, err := readAll(t, onlyNew, ids[0])
	require.NoError(t, err, "the new KEK alone opens it")
	require.Equal(t, data, got)
	got, _, err = readAll(t, onlyNew, ids[1])
	require.NoError(t, err)
	require.Equal(t, data[:100], got)
}

// TestTempReadAtSeesPlaintextAcrossChunks: the sniffer reads a container's
// directory from the temp blob before commit.
func TestTempReadAtSeesPlaintextAcrossChunks(t *testing.T) {
	t.Parallel()
	s, err := blob.OpenEncrypted(t.TempDir(), keyring(t, newKey(t)))
	require.NoError(t, err)
	data := plaintext(2*blob.ChunkSize + 300)
	tmp, err := s.Create()
	require.NoError(t, err)
	defer tmp.Abort()
	_, err = tmp.Write(data)
	require.NoError(t, err)
	for _, off := range []int{0, 10, blob.ChunkSize - 5, blob.ChunkSize, 2*blob.ChunkSize + 1} {
		p := make([]byte, 200)
		n, err := tmp.ReadAt(p, int64(off))
		if off+200 > len(data) {
			require.ErrorIs(t, err, io.EOF)
		} else {
			require.NoError(t, err)
		}
		require.Equal(t, data[off:off+n], p[:n], "offset %d", off)
	}
}

func TestParseKEK(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	got, err := blob.ParseKEK(k)
	require.NoError(t, err)
	require.Equal(t, k, got)
	f := filepath.Join(t.TempDir(), "kek")
	wrote, err := blob.GenerateKEKFile(f)
	require.NoError(t, err)
	require.True(t, wrote)
	wrote, err = blob.GenerateKEKFile(f)
	require.NoError(t, err)
	require.False(t, wrote, "an existing key is kept")
	_, err = blob.ReadKEKFile(f)
	require.NoError(t, err)
	_, err = blob.ParseKEK([]byte("too short"))
	require.Error(t, err)
}
