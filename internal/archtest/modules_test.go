package archtest_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/modfile"
)

// buildList lists the module version of every package the root module's
// packages and tests build with.
func buildList(t *testing.T, root string, env ...string) string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-test", "-f", "{{with .Module}}{{.Path}} {{.Version}}{{end}}", "./...")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, stderr.String())
	seen := map[string]bool{}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" && !seen[l] {
			seen[l] = true
			lines = append(lines, l)
		}
	}
	require.NotEmpty(t, lines)
	return strings.Join(lines, "\n")
}

// TestWorkspaceBuildsWhatTheImagesBuild: the workspace (go.work: the root,
// deploy and tools) must not lift a dependency of the root module above
// what go.mod alone selects, or the tests run against other code than the
// images (built with GOWORK=off). And go.mod's go line is go.work's.
func TestWorkspaceBuildsWhatTheImagesBuild(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	require.NoError(t, err)
	if _, err := os.Stat(filepath.Join(root, "go.work")); err != nil {
		t.Skip("no go.work: the build is go.mod's")
	}
	ws := buildList(t, root)
	off := buildList(t, root, "GOWORK=off")
	require.Contains(t, off, "google.golang.org/protobuf v")
	require.Equal(t, off, ws, "the workspace selects other module versions than go.mod (GOWORK=off): align the requirements of deploy/ and tools/ with the root go.mod")

	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	mf, err := modfile.ParseLax("go.mod", gomod, nil)
	require.NoError(t, err)
	gowork, err := os.ReadFile(filepath.Join(root, "go.work"))
	require.NoError(t, err)
	wf, err := modfile.ParseWork("go.work", gowork, nil)
	require.NoError(t, err)
	require.NotNil(t, mf.Go)
	require.NotNil(t, wf.Go)
	require.Equal(t, wf.Go.Version, mf.Go.Version, "go.mod's go line and go.work's differ")
}
