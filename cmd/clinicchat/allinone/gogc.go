package allinone

import (
	"os"
	"runtime/debug"
)

// DefaultGCPercent is the collector's pace (GOGC) while a memory limit caps
// the heap (--memory-limit, the default, or GOMEMLIMIT): the heap may grow
// to three times the live heap between collections, where GOGC=100 lets it
// reach twice, and the limit stops it at its peaks as before. At 8 senders
// flat out it halved the collections (23 → 11 per 6,000 messages) and took
// ~10% off the CPU per message and ~2 ms off send → stream p99 (7.9 against
// 9.9 ms); at 1,000 sends/s, where the limit binds, the peak RSS stayed
// where it was (133.5-135.3 MiB against 131.4-135.1; BENCHMARKS.md, "Where
// we are" of Dec 2's twelfth session). Without a limit a higher pace would
// be a larger heap with nothing to cap it, so there it stays Go's 100.
const DefaultGCPercent = 200

// goDefaultGCPercent is Go's own pace when $GOGC is not set.
const goDefaultGCPercent = 100

// applyGCPercent sets the collector's pace (debug.SetGCPercent): n when n
// > 0; else, unless $GOGC is set (then it is left alone),
// DefaultGCPercent when limited (a memory limit caps the heap) and Go's
// default otherwise (set, not assumed: Start may run more than once in a
// process, as in tests). It returns the pace in force and whether it set
// it.
func applyGCPercent(n int, limited bool) (int, bool) {
	if n <= 0 {
		if v := os.Getenv("GOGC"); v != "" {
			return -1, false
		}
		n = goDefaultGCPercent
		if limited {
			n = DefaultGCPercent
		}
	}
	debug.SetGCPercent(n)
	return n, true
}
