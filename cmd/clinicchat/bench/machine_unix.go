//go:build unix

package bench

import (
	"fmt"
	"runtime"
	"sort"
	"sync"
	"syscall"
	"time"
)

// Machine is what a kernel transition costs on the machine the bench runs
// on, measured just before the run. A message through the stack is dozens
// of system calls and thread wake-ups in each process it crosses, so where
// these cost several times more (a VM whose guest kernel traps into the
// host on every system call and context switch, with page-table isolation
// on), so does a message, and rates measured on different machines (or on
// one VM at different times) compare only next to these figures
// (BENCHMARKS.md, Dec 4 sixth session).
type Machine struct {
	// SyscallMicros is one system call that does nothing (getppid), the
	// median of several rounds.
	SyscallMicros float64 `json:"syscallMicros"`
	// WakeupOneCPUMicros is one thread writing a byte into a pipe and
	// sleeping until a second thread, woken by it, writes one back, both on
	// one CPU: two wake-ups and four context switches, the median of
	// several rounds. WakeupTwoCPUsMicros is the same with the threads on
	// two CPUs, each wake-up one of a sleeping CPU (0 with one CPU). Left
	// to the scheduler, a round trip takes one or the other at random,
	// which is why both are pinned (Linux; elsewhere both are unpinned).
	WakeupOneCPUMicros  float64 `json:"wakeupOneCpuMicros"`
	WakeupTwoCPUsMicros float64 `json:"wakeupTwoCpusMicros,omitempty"`
}

// Calibration sizes: each round is short (a few ms even on a slow VM),
// the median of the rounds keeps out a round the scheduler disturbed.
const (
	calRounds      = 7
	calSyscalls    = 20000
	calWakeupTrips = 300
)

// measureMachine measures the Machine figures, in about 50-150 ms.
func measureMachine() (*Machine, error) {
	sys := make([]float64, 0, calRounds)
	for range calRounds {
		start := time.Now()
		for range calSyscalls {
			syscall.Getppid()
		}
		sys = append(sys, float64(time.Since(start).Nanoseconds())/calSyscalls/1000)
	}
	m := &Machine{SyscallMicros: median(sys)}
	cpus := allowedCPUs()
	var err error
	if m.WakeupOneCPUMicros, err = medianTrip(cpus[0], cpus[0]); err != nil {
		return nil, err
	}
	if len(cpus) > 1 {
		if m.WakeupTwoCPUsMicros, err = medianTrip(cpus[0], cpus[1]); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// medianTrip is the median over calRounds of wakeupRoundTrip's mean.
func medianTrip(cpuA, cpuB int) (float64, error) {
	trips := make([]float64, 0, calRounds)
	for range calRounds {
		us, err := wakeupRoundTrip(calWakeupTrips, cpuA, cpuB)
		if err != nil {
			return 0, err
		}
		trips = append(trips, us)
	}
	return median(trips), nil
}

// wakeupRoundTrip is the mean of n round trips, in µs, between two OS
// threads over two blocking pipes, the first pinned to cpuA and the second
// to cpuB where pinCPU can (else where the scheduler puts them): each read sleeps in the kernel until the other thread's
// write wakes it (the runtime's poller is not involved). Each thread is
// locked to its goroutine while pinned, and unpinned before it is unlocked
// (pinCPU: why it must not end).
func wakeupRoundTrip(n, cpuA, cpuB int) (float64, error) {
	var ping, pong [2]int
	if err := syscall.Pipe(ping[:]); err != nil {
		return 0, fmt.Errorf("calibrate: %w", err)
	}
	defer syscall.Close(ping[0])
	// A side that fails closes the pipe it writes to, so that the other,
	// waiting to read it, ends too (reads the end of it) instead of
	// waiting for ever; each write end is closed once.
	closePing := sync.OnceFunc(func() { syscall.Close(ping[1]) })
	defer closePing()
	if err := syscall.Pipe(pong[:]); err != nil {
		return 0, fmt.Errorf("calibrate: %w", err)
	}
	defer syscall.Close(pong[0])
	closePong := sync.OnceFunc(func() { syscall.Close(pong[1]) })
	defer closePong()
	echoed := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer pinCPU(cpuB)() // its CPUs back before the thread goes back
		b := make([]byte, 1)
		for range n {
			if err := readFull(ping[0], b); err != nil {
				closePong()
				echoed <- err
				return
			}
			if _, err := syscall.Write(pong[1], b); err != nil {
				closePong()
				echoed <- err
				return
			}
		}
		echoed <- nil
	}()
	type result struct {
		took time.Duration
		err  error
	}
	timed := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer pinCPU(cpuA)()
		b := []byte{1}
		start := time.Now()
		for range n {
			if _, err := syscall.Write(ping[1], b); err != nil {
				closePing()
				timed <- result{err: err}
				return
			}
			if err := readFull(pong[0], b); err != nil {
				closePing()
				timed <- result{err: err}
				return
			}
		}
		timed <- result{took: time.Since(start)}
	}()
	r := <-timed
	if err := <-echoed; err != nil && r.err == nil {
		r.err = err
	}
	if r.err != nil {
		return 0, fmt.Errorf("calibrate: %w", r.err)
	}
	return float64(r.took.Nanoseconds()) / float64(n) / 1000, nil
}

// readFull reads len(b) bytes from the blocking fd, retrying EINTR.
func readFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := syscall.Read(fd, b)
		switch {
		case err == syscall.EINTR:
			continue
		case err != nil:
			return err
		case n == 0:
			return fmt.Errorf("pipe closed")
		}
		b = b[n:]
	}
	return nil
}

// median of xs (sorted in place); xs is never empty here.
func median(xs []float64) float64 {
	sort.Float64s(xs)
	return xs[len(xs)/2]
}
