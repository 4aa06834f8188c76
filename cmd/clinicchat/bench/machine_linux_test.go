package bench

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// The calibration gives its threads back to the runtime as they were: a
// thread it ended would SIGKILL every child started from it with
// Pdeathsig, as the fault rig starts its processes (a CI run lost five
// services so when the calibration's locked goroutines returned locked).
// Children started from many threads stay alive through several
// calibrations, and the threads are pinned to no single CPU afterwards.
func TestMeasureMachineKeepsItsThreads(t *testing.T) {
	const children = 12
	cmds := make([]*exec.Cmd, children)
	var wg sync.WaitGroup
	for i := range cmds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command("sleep", "60")
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			require.NoError(t, cmd.Start())
			cmds[i] = cmd
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range cmds {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	for range 3 {
		_, err := measureMachine()
		require.NoError(t, err)
	}
	for i, c := range cmds {
		// Signal 0: the child exists (a killed, unreaped child is a zombie:
		// check its state too).
		require.NoError(t, c.Process.Signal(syscall.Signal(0)), "child %d", i)
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(c.Process.Pid, &ws, syscall.WNOHANG, nil)
		require.NoError(t, err)
		require.Zero(t, pid, "child %d exited: %v", i, ws)
	}
	if runtime.NumCPU() > 1 {
		cpus := allowedCPUs()
		require.Len(t, cpus, 2, "this thread may run on more than one CPU")
	}
}
