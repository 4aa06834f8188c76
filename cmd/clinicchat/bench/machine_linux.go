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

// pinCPU pins the calling thread, locked to its goroutine, to cpu (-1:
// leaves it as it is) and returns what puts its CPUs back, to run before it
// is unlocked. A thread it cannot pin stays where the scheduler puts it.
// The thread must go back to the runtime as it was: ended instead (a
// locked goroutine that returns), it would take with it every child process
// it had started with Pdeathsig (os/exec's SysProcAttr), as the fault rig
// does and a CI run showed.
func pinCPU(cpu int) (restore func()) {
	if cpu < 0 {
		return func() {}
	}
	var old, set unix.CPUSet
	if unix.SchedGetaffinity(0, &old) != nil {
		return func() {}
	}
	set.Set(cpu)
	if unix.SchedSetaffinity(0, &set) != nil {
		return func() {}
	}
	return func() { _ = unix.SchedSetaffinity(0, &old) }
}
