package archtest_test

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/internal/archtest"
)

const module = "github.com/clinicchat/clinicchat"

// goList runs `go list -deps -json ./...` in dir and decodes its stream.
func goList(t *testing.T, dir string, env ...string) []archtest.Package {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Standard,Imports", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "go list in %s: %s", dir, stderr.String())
	var pkgs []archtest.Package
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p archtest.Package
		err := dec.Decode(&p)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		pkgs = append(pkgs, p)
	}
	require.NotEmpty(t, pkgs)
	return pkgs
}

// TestBoundaries checks this module's real import graph.
func TestBoundaries(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	require.NoError(t, err)
	pkgs := goList(t, root)
	// The graph is the real one: it holds the services, the gateway and
	// their domains.
	paths := map[string]bool{}
	for _, p := range pkgs {
		paths[p.ImportPath] = true
	}
	for _, want := range []string{"gateway", "services/delivery/internal/domain", "services/audit/internal/domain", "services/platform/outbox"} {
		require.True(t, paths[module+"/"+want], "go list did not list %s", want)
	}
	if v := archtest.Check(module, pkgs); len(v) > 0 {
		t.Fatalf("%d import boundaries crossed:\n%s", len(v), strings.Join(v, "\n"))
	}
}

// TestBoundariesCrossed runs the same check on a small module in testdata
// that crosses every boundary once, and expects exactly those crossings.
func TestBoundariesCrossed(t *testing.T) {
	const m = "example.com/house"
	got := archtest.Check(m, goList(t, filepath.Join("testdata", "house"), "GOWORK=off", "GOFLAGS=-mod=mod"))
	require.Equal(t, []string{
		m + "/gateway/leak imports " + m + "/services/a: the gateway reaches services only over gRPC (it may import proto/... and services/platform/...)",
		m + "/services/a imports " + m + "/services/b: a service imports another service (talk over gRPC or events)",
		m + "/services/a/internal/domain imports " + m + "/services/a/internal/app: layer domain imports layer app (domain ← app ← adapters)",
		m + "/services/a/internal/domain reaches database/sql (via database/sql): a domain package imports no adapter",
		m + "/services/a/internal/domain reaches " + m + "/services/a/internal/app (via " + m + "/services/a/internal/app): a domain package imports no adapter",
		m + "/services/a/internal/domain reaches " + m + "/services/platform/outbox (via " + m + "/services/platform/outbox): a domain package imports no adapter",
		m + "/services/b imports " + m + "/gateway: a service imports the gateway",
		m + "/services/platform/leak imports " + m + "/services/b: platform imports a service or the gateway",
	}, got)
}

// TestDomainTransitive: an adapter reached through another package of the
// module is reported with the chain, and allowed packages are not followed.
func TestDomainTransitive(t *testing.T) {
	const m = "example.com/x"
	pkgs := []archtest.Package{
		{ImportPath: m + "/services/s/internal/domain", Imports: []string{m + "/services/s/internal/domain/rules", m + "/services/platform/errs"}},
		{ImportPath: m + "/services/s/internal/domain/rules", Imports: []string{"github.com/nats-io/nats.go", "strings"}},
		{ImportPath: m + "/services/platform/errs", Imports: []string{"google.golang.org/grpc"}},
		{ImportPath: "github.com/nats-io/nats.go"},
		{ImportPath: "google.golang.org/grpc"},
		{ImportPath: "strings", Standard: true},
	}
	require.Equal(t, []string{
		m + "/services/s/internal/domain reaches github.com/nats-io/nats.go (via " + m + "/services/s/internal/domain/rules → github.com/nats-io/nats.go): a domain package imports no adapter",
		m + "/services/s/internal/domain/rules reaches github.com/nats-io/nats.go (via github.com/nats-io/nats.go): a domain package imports no adapter",
	}, archtest.Check(m, pkgs))
}
