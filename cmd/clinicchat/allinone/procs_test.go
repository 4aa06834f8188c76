package allinone

import (
	"flag"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestGoMaxProcs(t *testing.T) {
	prev := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	t.Setenv("GOMAXPROCS", "") // the default case, whatever the test runner's environment

	runtime.SetDefaultGOMAXPROCS()
	def := runtime.GOMAXPROCS(0)
	n, changed := applyGoMaxProcs(0)
	require.True(t, changed)
	require.Equal(t, def+ExtraProcs, n)
	require.Equal(t, def+ExtraProcs, runtime.GOMAXPROCS(0))

	// Again (a second Start in the process): from the default, not stacked.
	n, changed = applyGoMaxProcs(0)
	require.False(t, changed)
	require.Equal(t, def+ExtraProcs, n)
	require.Equal(t, def+ExtraProcs, runtime.GOMAXPROCS(0))

	// --gomaxprocs N is exactly N.
	n, changed = applyGoMaxProcs(3)
	require.Equal(t, 3, n)
	require.Equal(t, def+ExtraProcs != 3, changed)
	require.Equal(t, 3, runtime.GOMAXPROCS(0))

	// $GOMAXPROCS wins over the automatic setting: left as the runtime set it.
	t.Setenv("GOMAXPROCS", "1")
	runtime.GOMAXPROCS(1)
	n, changed = applyGoMaxProcs(0)
	require.False(t, changed)
	require.Equal(t, 1, n)
	require.Equal(t, 1, runtime.GOMAXPROCS(0))
}

func TestGoMaxProcsFlag(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("clinicchat", flag.ContinueOnError)
	c.Flags(fs)
	require.NoError(t, fs.Parse([]string{"--gomaxprocs", "3"}))
	require.Equal(t, 3, c.GoMaxProcs)
	require.NoError(t, c.Validate())
	require.NoError(t, fs.Parse([]string{"--gomaxprocs", "-1"}))
	require.ErrorContains(t, c.Validate(), "--gomaxprocs must not be negative")
}
