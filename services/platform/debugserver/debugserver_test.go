package debugserver_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/debugserver"
)

func TestOffUnlessConfigured(t *testing.T) {
	s, err := debugserver.Start("", zap.NewNop())
	require.NoError(t, err)
	require.Nil(t, s)
	require.NoError(t, s.Stop())
}

func TestServesProfilesAndRuntimeMetrics(t *testing.T) {
	s, err := debugserver.Start("127.0.0.1:0", zap.NewNop())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Stop()) })
	get := func(path string) string {
		resp, err := http.Get("http://" + s.Addr + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return string(b)
	}
	require.Contains(t, get("/debug/pprof/"), "goroutine")
	require.NotEmpty(t, get("/debug/pprof/heap?debug=1"))
	require.Contains(t, get("/debug/vars"), "memstats")
	m := get("/debug/metrics")
	require.True(t, strings.Contains(m, "/sched/goroutines:goroutines "), m)
}
