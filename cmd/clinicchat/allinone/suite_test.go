package allinone_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/internal/e2e"
)

// The end-to-end suite the distributed stack passes too
// (cmd/clinicchat/localcluster), here against the all-in-one.
func TestEndToEndSuite(t *testing.T) {
	in := start(t, t.TempDir())
	e2e.Run(t, e2e.Env{Base: "http://" + in.HTTPAddr, Token: func(t *testing.T, sub, role string, authAge time.Duration) string {
		tok, err := in.DevIssuer.Issue(sub, role, "demo", "", authAge)
		require.NoError(t, err)
		return tok
	}})
}
