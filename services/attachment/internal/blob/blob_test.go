package blob_test

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/attachment/internal/blob"
	"github.com/clinicchat/clinicchat/services/platform/ids"
)

func tmpEntries(t *testing.T, dir string) []os.DirEntry {
	t.Helper()
	e, err := os.ReadDir(filepath.Join(dir, "tmp"))
	require.NoError(t, err)
	return e
}

func TestCommitAndOpen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := blob.Open(dir)
	require.NoError(t, err)
	tmp, err := s.Create()
	require.NoError(t, err)
	_, err = tmp.Write([]byte("hello "))
	require.NoError(t, err)
	_, err = tmp.Write([]byte("world"))
	require.NoError(t, err)
	id := ids.New()
	require.NoError(t, tmp.Commit(id))
	tmp.Abort() // harmless after Commit
	require.Empty(t, tmpEntries(t, dir))

	info, err := os.Stat(filepath.Join(dir, id[:2], id))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	f, err := s.Open(id)
	require.NoError(t, err)
	b, err := io.ReadAll(f)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.Equal(t, "hello world", string(b))

	require.NoError(t, s.Remove(id))
	_, err = s.Open(id)
	require.ErrorIs(t, err, blob.ErrNotFound)
	require.NoError(t, s.Remove(id), "removing a missing blob is fine")
}

func TestAbortLeavesNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := blob.Open(dir)
	require.NoError(t, err)
	tmp, err := s.Create()
	require.NoError(t, err)
	_, err = tmp.Write([]byte("partial"))
	require.NoError(t, err)
	tmp.Abort()
	tmp.Abort()
	require.Empty(t, tmpEntries(t, dir))
}

func TestRefusesBadIDs(t *testing.T) {
	t.Parallel()
	s, err := blob.Open(t.TempDir())
	require.NoError(t, err)
	for _, id := range []string{"", "..", "../../etc/passwd", "a/b", "x.y", "ab"} {
		_, err := s.Open(id)
		require.Error(t, err, id)
		require.NotErrorIs(t, err, blob.ErrNotFound, id)
		tmp, err := s.Create()
		require.NoError(t, err)
		require.Error(t, tmp.Commit(id), id)
	}
}

func TestOpenRemovesStaleTemps(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, err := blob.Open(dir)
	require.NoError(t, err)
	stale := filepath.Join(dir, "tmp", "upload-stale")
	fresh := filepath.Join(dir, "tmp", "upload-fresh")
	require.NoError(t, os.WriteFile(stale, []byte("x"), 0o600))
	require.NoError(t, os.WriteFile(fresh, []byte("x"), 0o600))
	old := time.Now().Add(-2 * blob.StaleTemp)
	require.NoError(t, os.Chtimes(stale, old, old))
	_, err = blob.Open(dir)
	require.NoError(t, err)
	_, err = os.Stat(stale)
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = os.Stat(fresh)
	require.NoError(t, err)
}
