package localcluster

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// sysProcAttr puts each child in a process group of its own (a terminal's
// Ctrl-C reaches only deploy/local/up, which stops the children in order)
// and has the kernel SIGTERM it if the cluster process dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// Pdeathsig fires when the thread that forked the child exits, not the
// process; so every child is forked from one goroutine locked to its thread
// for good (a thread locked and never unlocked is never reused or ended).
var (
	spawnOnce sync.Once
	spawns    = make(chan spawn)
)

type spawn struct {
	cmd *exec.Cmd
	err chan error
}

func startCmd(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		go func() {
			runtime.LockOSThread()
			for s := range spawns {
				s.err <- s.cmd.Start()
			}
		}()
	})
	s := spawn{cmd: cmd, err: make(chan error, 1)}
	spawns <- s
	return <-s.err
}
