package allinone

import (
	"runtime/debug"
	"runtime/metrics"
	"testing"

	"github.com/stretchr/testify/require"
)

// gogc reads the collector's pace in force.
func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

func TestGCPercentDefault(t *testing.T) {
	prev := gogc()
	t.Cleanup(func() { debug.SetGCPercent(prev) })
	t.Setenv("GOGC", "")

	pace, set := applyGCPercent(0, true)
	require.True(t, set)
	require.Equal(t, DefaultGCPercent, pace)
	require.Equal(t, DefaultGCPercent, gogc(), "a memory limit caps the heap: the slower pace")

	pace, set = applyGCPercent(0, false)
	require.True(t, set)
	require.Equal(t, 100, pace)
	require.Equal(t, 100, gogc(), "no limit: Go's own pace, set again after a start that changed it")

	pace, _ = applyGCPercent(150, false)
	require.Equal(t, 150, pace)
	require.Equal(t, 150, gogc(), "--gogc as given")

	t.Setenv("GOGC", "300")
	debug.SetGCPercent(300)
	_, set = applyGCPercent(0, true)
	require.False(t, set)
	require.Equal(t, 300, gogc(), "$GOGC wins over the default")
	pace, _ = applyGCPercent(120, true)
	require.Equal(t, 120, gogc(), "--gogc wins over $GOGC")
	require.Equal(t, 120, pace)
}
