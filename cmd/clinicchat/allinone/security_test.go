package allinone_test

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestKeysLiveApartFromTheDataDir: in dev mode the audit signing key and the
// attachment KEK are generated in <data-dir>-keys, not in the data dir; the
// audit logs verify (metric and readiness), and artifacts come from the demo
// provider, which accepts only delivery's own credential.
func TestKeysLiveApartFromTheDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	h := harness{t: t, in: start(t, dir)}

	require.NoError(t, filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		require.NoError(t, err)
		require.False(t, strings.HasSuffix(p, "audit-signing.key") || strings.HasSuffix(p, ".kek") || strings.HasSuffix(p, "audit-checkpoint.key"),
			"%s holds a key", p)
		return nil
	}))
	for _, f := range []string{"audit-signing.key", "attachment.kek"} {
		info, err := os.Stat(filepath.Join(dir+"-keys", f))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	}

	var arts struct {
		Artifacts []map[string]any `json:"artifacts"`
	}
	require.Equal(t, 200, h.as("dr-lee", "dentist").do("GET", "/v1/patients/alice/artifacts?type=APPOINTMENT", nil, &arts))
	require.NotEmpty(t, arts.Artifacts)

	resp, err := http.Get("http://" + h.in.HTTPAddr + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Contains(t, string(body), "clinicchat_audit_log_valid 1")
	resp, err = http.Get("http://" + h.in.HTTPAddr + "/readyz")
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
}
