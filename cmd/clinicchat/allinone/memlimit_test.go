package allinone

import (
	"flag"
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
)

// The governor's limit is the target while the live heap leaves the
// collector at least half its scan work (live heap, stacks, globals) to
// allocate into, and rises with them beyond that (never a limit under the
// live heap, where the collector would run all the time).
func TestMemoryGovernorLimit(t *testing.T) {
	g := newMemoryGovernor(80 << 20)
	for _, c := range []struct {
		live, scan, nonHeap, stacks uint64
		want                        int64
	}{
		{live: 10 << 20, scan: 12 << 20, nonHeap: 12 << 20, want: 80 << 20},
		{live: 40 << 20, scan: 44 << 20, nonHeap: 18 << 20, want: 80 << 20},                 // 18 + 40 + 22 = 80
		{live: 60 << 20, scan: 64 << 20, nonHeap: 12 << 20, want: (12 + 60 + 32) << 20},     // 1,000 sends/s
		{live: 57 << 20, scan: 78 << 20, nonHeap: 30 << 20, want: (30 + 57 + 39) << 20},     // 5,000 streams: 20 MiB of stacks
		{live: 200 << 20, scan: 220 << 20, nonHeap: 40 << 20, want: (40 + 200 + 110) << 20}, // issue 9 before
		{want: 80 << 20},
		// The stacks' allowance: 3 bytes of target per byte of stacks.
		{live: 40 << 20, scan: 44 << 20, nonHeap: 18 << 20, stacks: 2 << 20, want: (80 + 6) << 20},
		{live: 57 << 20, scan: 78 << 20, nonHeap: 30 << 20, stacks: 20 << 20, want: (80 + 60) << 20}, // 5,000 streams
	} {
		require.Equal(t, c.want, g.limitFor(c.live, c.scan, c.nonHeap, c.stacks), "live %d MiB, scan %d MiB, other %d MiB, stacks %d MiB",
			c.live>>20, c.scan>>20, c.nonHeap>>20, c.stacks>>20)
	}
}

// update sets the runtime's limit from its own figures: with a target far
// under this process's memory, the limit it sets is above the live heap by
// at least minHeadroom (and is set again only when it changes).
func TestMemoryGovernorUpdateSetsTheRuntimesLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	hold := make([][]byte, 0, 64)
	for range 64 {
		hold = append(hold, make([]byte, 256<<10)) // 16 MiB live
	}
	runtime.GC()
	g := newMemoryGovernor(1 << 20)
	var sets int
	g.set = func(n int64) int64 { sets++; return debug.SetMemoryLimit(n) }
	limit := g.update()
	require.Equal(t, limit, debug.SetMemoryLimit(-1))
	require.Greater(t, limit, int64(16<<20)*3/2, "at least the live heap and half of it")
	g.update()
	runtime.KeepAlive(hold)
	require.LessOrEqual(t, sets, 2)

	g = newMemoryGovernor(1 << 40)
	require.GreaterOrEqual(t, g.update(), int64(1<<40), "a target above what the heap needs is the limit, with the stacks' allowance")
}

// Event streams that park while idle (no goroutine, no stack) raise the
// limit as their stacks did: parkedStreamBytes each, stackAllowance times.
func TestMemoryGovernorAllowsForParkedStreams(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	var parked int64
	g := newMemoryGovernor(1 << 40)
	g.parked = func() int64 { return parked }
	none := g.update()
	parked = 5000
	require.Equal(t, none+stackAllowance*5000*parkedStreamBytes, g.update())
}

// Without --memory-limit the all-in-one governs DefaultMemoryLimit unless
// GOMEMLIMIT is set (then the runtime's, fixed); a limit given is governed
// (memoryGovernor), and --memory-limit 0 is none.
func TestMemoryLimitDefault(t *testing.T) {
	for _, c := range []struct {
		env  string
		args []string
		want int64
	}{
		{env: "", want: DefaultMemoryLimit},
		{env: "200MiB", want: 0},
		{env: "", args: []string{"--memory-limit", "0"}, want: 0},
		{env: "", args: []string{"--memory-limit", "80MiB"}, want: SmallMemoryLimit},
		{env: "200MiB", args: []string{"--memory-limit", "96MiB"}, want: 96 << 20},
	} {
		t.Setenv("GOMEMLIMIT", c.env)
		fs := flag.NewFlagSet("clinicchat", flag.ContinueOnError)
		var cfg Config
		cfg.Flags(fs)
		require.NoError(t, fs.Parse(c.args))
		require.Equal(t, c.want, cfg.MemoryLimit, "GOMEMLIMIT=%q %v", c.env, c.args)
	}
}

// Issue 10's 150 MB (143.05 MiB) at 1,000 sends/s: less the program's
// resident pages (~37 MiB) and SQLite's memory (~12 MiB at the peaks), the
// Go runtime has ~94 MiB. At that rate the live heap peaks at 40-47 MiB
// (mostly NATS's write caches) with ~3 MiB of goroutine stacks and ~11 MiB
// of the runtime's other memory, where GOGC=100 alone would let the
// runtime reach ~100 MiB; the default governed limit holds it within the
// budget there and only there: at a live heap it does not need to cut, the
// collector keeps GOGC=100's pace (BENCHMARKS.md, mem22).
func TestDefaultMemoryLimitHoldsTheRuntimeUnder150MBAt1000SendsPerSecond(t *testing.T) {
	const mib = 1 << 20
	g := newMemoryGovernor(DefaultMemoryLimit)
	for _, live := range []uint64{40 * mib, 47 * mib} {
		limit := g.limitFor(live, live+3*mib+1*mib, 11*mib, 3*mib)
		require.LessOrEqual(t, limit, int64(94*mib), "live heap %d MiB", live/mib)
		gogc := int64(11*mib) + 2*int64(live) + 4*mib
		require.Less(t, limit, gogc, "the limit binds at live heap %d MiB", live/mib)
	}
	limit := g.limitFor(25*mib, 29*mib, 11*mib, 3*mib)
	require.GreaterOrEqual(t, limit, int64(11*mib+2*25*mib+4*mib), "below the peaks the collector keeps GOGC=100's pace")
}
