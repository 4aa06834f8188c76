package signer_test

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"

	"github.com/clinicchat/clinicchat/services/audit/internal/signer"
)

func TestParseDerivesTheVerifier(t *testing.T) {
	t.Parallel()
	// Enough keys that some base64 keys contain '+'.
	for range 50 {
		skey, vkey, err := note.GenerateKey(rand.Reader, "audit")
		require.NoError(t, err)
		k, err := signer.Parse(skey + "\n")
		require.NoError(t, err)
		require.Equal(t, vkey, k.VerifierKey)
		msg, err := note.Sign(&note.Note{Text: "hello\n"}, k.Signer)
		require.NoError(t, err)
		_, err = note.Open(msg, note.VerifierList(k.Verifier))
		require.NoError(t, err)
	}
	for _, bad := range []string{"", "PRIVATE+KEY+x", "nonsense", strings.Repeat("+", 4)} {
		_, err := signer.Parse(bad)
		require.Error(t, err)
	}
}

func TestEnsureDev(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "keys", "audit.key")
	require.NoError(t, signer.EnsureDev(path, "clinicchat-audit"))
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	k1, err := signer.Load(path)
	require.NoError(t, err)
	pub, err := os.ReadFile(path + ".pub")
	require.NoError(t, err)
	require.Equal(t, k1.VerifierKey+"\n", string(pub))
	require.True(t, strings.HasPrefix(k1.VerifierKey, "clinicchat-audit+"))

	// A second call keeps the key.
	require.NoError(t, signer.EnsureDev(path, "clinicchat-audit"))
	k2, err := signer.Load(path)
	require.NoError(t, err)
	require.Equal(t, k1.VerifierKey, k2.VerifierKey)

	// A file that is not a key is reported, never replaced.
	junk := filepath.Join(t.TempDir(), "junk.key")
	require.NoError(t, os.WriteFile(junk, []byte("junk"), 0o600))
	require.Error(t, signer.EnsureDev(junk, "x"))
	_, err = signer.Load(filepath.Join(t.TempDir(), "missing"))
	require.Error(t, err)
}
