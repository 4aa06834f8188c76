package bench

import "golang.org/x/sys/unix"

// allowedCPUs are the CPUs the process may run on, at least one.
func allowedCPUs() []int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return []int{-1}
	}
	var cpus []int
	for c := 0; c < len(set)*64 && len(cpus) < 2; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) == 0 {
		return []int{-1}
	}
	return cpus
}

// pinCPU pins the calling thread to cpu (-1: leaves it as it is). A thread
// it cannot pin stays where the scheduler puts it.
func pinCPU(cpu int) {
	if cpu < 0 {
		return
	}
	var set unix.CPUSet
	set.Set(cpu)
	_ = unix.SchedSetaffinity(0, &set)
}
