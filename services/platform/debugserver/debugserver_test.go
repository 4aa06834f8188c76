package debugserver_test

import (
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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

// GoCollector adds the runtime's latency histograms to the default Go
// series: the run queue's wait, the stop-the-world pauses, the GC's CPU.
func TestGoCollectorHasTheRuntimeLatencies(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(debugserver.GoCollector())
	runtime.GC() // a pause and a cycle to count
	mfs, err := reg.Gather()
	require.NoError(t, err)
	got := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf
	}
	for _, name := range []string{"go_sched_latencies_seconds", "go_sched_pauses_total_gc_seconds", "go_sched_pauses_stopping_gc_seconds"} {
		require.Contains(t, got, name)
		require.Equal(t, dto.MetricType_HISTOGRAM, got[name].GetType(), name)
	}
	require.NotZero(t, got["go_sched_pauses_total_gc_seconds"].GetMetric()[0].GetHistogram().GetSampleCount())
	for _, name := range []string{"go_cpu_classes_gc_total_cpu_seconds_total", "go_gc_cycles_total_gc_cycles_total",
		"go_goroutines", "go_gc_duration_seconds", "go_memstats_heap_alloc_bytes"} {
		require.Contains(t, got, name, "the default series stay")
	}
}
