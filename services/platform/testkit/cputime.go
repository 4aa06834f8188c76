package testkit

import (
	"syscall"
	"time"
)

// CPUTime is the process's user and system CPU time so far: what a
// benchmark's work cost, which unlike wall-clock time holds on a busy
// machine (every goroutine of the process counted, servers under test
// included).
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic("getrusage: " + err.Error())
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
