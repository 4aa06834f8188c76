package allinone

import (
	"os"
	"runtime"
)

// ExtraProcs is how many Go scheduler processors the all-in-one runs above
// the CPUs the runtime sees (--gomaxprocs 0).
//
// Its SQLite writers (one per service's database) spend much of their time
// in file system calls — the WAL's writes and the fsync of every commit,
// 0.15–0.3 ms each here — which, unlike network I/O, block their thread.
// The processor of a goroutine in such a call is handed to other
// goroutines only once the runtime's monitor notices (after 20 µs or
// more), and a thread coming back from one finds its processor gone and
// waits for another. With as many processors as CPUs, a core then sits
// idle while runnable work queues, on two cores often enough to show in
// every figure. Two processors of slack take that up: at 8 gRPC senders on
// the 2-core benchmark machine, 4 instead of 2 gave 2,320–2,473 sends/s
// against 1,684–2,155, 0.61–0.65 ms of CPU per message against 0.64–0.84,
// and send → stream p99 10.3–11.1 ms against 12.6–17.7 (BENCHMARKS.md,
// "GOMAXPROCS"); 3, 6 and 8 were within the noise of 4.
const ExtraProcs = 2

// applyGoMaxProcs sets runtime.GOMAXPROCS: n when n > 0, else — unless
// $GOMAXPROCS is set, which the runtime has applied already — the
// runtime's default (the CPUs it sees, cgroup quota included) plus
// ExtraProcs. It returns the setting and whether it changed it. Setting it
// stops the runtime from following later changes of the CPU quota.
func applyGoMaxProcs(n int) (int, bool) {
	prev := runtime.GOMAXPROCS(0)
	if n <= 0 {
		if os.Getenv("GOMAXPROCS") != "" {
			return prev, false
		}
		// From the default, not from the current setting: Start may run
		// more than once in a process (tests).
		runtime.SetDefaultGOMAXPROCS()
		n = runtime.GOMAXPROCS(0) + ExtraProcs
	}
	runtime.GOMAXPROCS(n)
	return n, n != prev
}
