//go:build unix && !linux

package bench

import "runtime"

// allowedCPUs stands for the CPUs without pinning: one "CPU" (-1) when
// there is one, two otherwise; the round trips are then unpinned.
func allowedCPUs() []int {
	if runtime.NumCPU() > 1 {
		return []int{-1, -1}
	}
	return []int{-1}
}

// pinCPU does nothing here: no portable thread affinity.
func pinCPU(int) (restore func()) { return func() {} }
