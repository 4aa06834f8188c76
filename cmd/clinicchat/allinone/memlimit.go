package allinone

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/clinicchat/clinicchat/gateway"
)

// DefaultMemoryLimit is --memory-limit's default: the Go runtime's memory
// (heap, stacks, runtime metadata) the governor aims to stay within, before
// the allowance for goroutine stacks (stackAllowance). The program's text
// and data (~25-37 MiB) and SQLite's memory (~8-15 MiB; mem18, mem21,
// mem22) come on top. It cuts the live heap's peaks, where the heap would
// grow to twice them, and leaves the collector GOGC=100's pace below them:
// at 1,000 sends/s the live heap is 35-47 MiB, two thirds of it NATS's
// file-store write caches (4 MiB buffers, which cost the collector nothing
// to mark but count in its goal), and the Go runtime's memory would reach
// ~100 MiB at the peaks. 84 MiB (96 until mem22; mem15) held the process
// at 134-138 MiB there, under 150 MB, with 6-13% more collections per
// message (~0.5% of the process's CPU); 80 MiB cost ~10% more
// collections than 84 (BENCHMARKS.md, mem22).
const DefaultMemoryLimit int64 = 84 << 20

// SmallMemoryLimit is a --memory-limit for a smaller footprint: at 400-500
// sends/s the process held 135 MiB of RSS on average, against 170 without
// a limit, for ~3% CPU per message at a steady rate and 14-20% with 5,000
// event streams open (their stacks are scanned every cycle); BENCHMARKS.md,
// mem14.
const SmallMemoryLimit int64 = 80 << 20

// stackAllowance is how much the governor adds to its target per byte of
// goroutine stacks: each open event stream holds a stack (~3.9 KiB) and
// about as much heap again (~2.7 KiB), and GOGC=100 lets the collector
// allocate as much as it scans before the next cycle. With it, what the
// streams a user opens take is not counted against the target, and
// thousands of them do not make the collector run more often than without
// a limit (BenchmarkIdleStreams: 5,000 streams are ~20 MiB of stacks, ~60
// MiB more target); the process's own work, a few MiB of stacks, moves the
// target by little.
const stackAllowance = 3

// parkedStreamBytes is what the governor counts as stacks for each event
// stream that holds no goroutine while idle (gateway.ParkingStreams; on
// Linux, every HTTP/1.1 stream): about what its goroutine's stack was
// (~2.6 KiB of heap while idle, and the buffers it is lent while it
// writes), so thousands of idle streams still do not make the collector
// run more often (BENCHMARKS.md, idle23).
const parkedStreamBytes = 4 << 10

// minHeadroom is the least the memory governor leaves the collector to
// allocate into between cycles, as a fraction of its scan work (the live
// heap, goroutine stacks and globals, as GOGC counts them): the limit it
// sets is never below the runtime's memory outside the heap, plus the
// live heap, plus minHeadroom times the scan work (GOGC=50's goal: at most
// twice the collections of the default GOGC=100). A target under that is
// raised to it instead of the collector running all the time, which a
// fixed limit under the live heap makes it do (mem9: 4.3× CPU per send).
// A quarter was measured too: with 5,000 event streams open (20 MiB of
// stacks to scan each cycle) it cost 2.2× CPU per send (BENCHMARKS.md,
// mem14).
const minHeadroom = 0.5

// governInterval is how often the governor reads the live heap (the last
// collection's mark; runtime/metrics, no stop-the-world).
const governInterval = 500 * time.Millisecond

// memoryGovernor holds the Go runtime's soft memory limit at target, or
// higher when the live heap needs it (minHeadroom).
type memoryGovernor struct {
	target  int64
	samples []metrics.Sample
	// set is debug.SetMemoryLimit (a test may watch it).
	set func(int64) int64
	// parked is how many event streams park while idle
	// (gateway.ParkingStreams; a test may set it).
	parked func() int64
	last   int64
}

const (
	mLive     = "/gc/heap/live:bytes"
	mTotal    = "/memory/classes/total:bytes"
	mObjects  = "/memory/classes/heap/objects:bytes"
	mUnused   = "/memory/classes/heap/unused:bytes"
	mFree     = "/memory/classes/heap/free:bytes"
	mReleased = "/memory/classes/heap/released:bytes"
	mStacks   = "/gc/scan/stack:bytes"
	mGlobals  = "/gc/scan/globals:bytes"
	mStackMem = "/memory/classes/heap/stacks:bytes"
)

func newMemoryGovernor(target int64) *memoryGovernor {
	g := &memoryGovernor{target: target, set: debug.SetMemoryLimit, parked: gateway.ParkingStreams}
	for _, n := range []string{mLive, mTotal, mObjects, mUnused, mFree, mReleased, mStacks, mGlobals, mStackMem} {
		g.samples = append(g.samples, metrics.Sample{Name: n})
	}
	return g
}

// limitFor is the limit for a live heap of live bytes, scan bytes of
// it, stacks and globals for the collector to scan, nonHeap bytes of the
// runtime's memory outside the heap (stacks, metadata, buffers), and
// stacks bytes of goroutine stacks (stackAllowance).
func (g *memoryGovernor) limitFor(live, scan, nonHeap, stacks uint64) int64 {
	floor := int64(nonHeap) + int64(live) + int64(float64(scan)*minHeadroom)
	return max(g.target+stackAllowance*int64(stacks), floor)
}

// update reads the runtime's memory and sets the limit; it returns it.
func (g *memoryGovernor) update() int64 {
	metrics.Read(g.samples)
	v := make(map[string]uint64, len(g.samples))
	for _, s := range g.samples {
		if s.Value.Kind() == metrics.KindUint64 {
			v[s.Name] = s.Value.Uint64()
		}
	}
	heap := v[mObjects] + v[mUnused] + v[mFree] + v[mReleased]
	var nonHeap uint64
	if v[mTotal] > heap {
		nonHeap = v[mTotal] - heap
	}
	stacks := v[mStackMem] + uint64(max(0, g.parked()))*parkedStreamBytes
	limit := g.limitFor(v[mLive], v[mLive]+v[mStacks]+v[mGlobals], nonHeap, stacks)
	if limit != g.last {
		g.set(limit)
		g.last = limit
	}
	return limit
}

// run keeps the limit up to date until ctx ends.
func (g *memoryGovernor) run(ctx context.Context) error {
	t := time.NewTicker(governInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			g.update()
		}
	}
}
