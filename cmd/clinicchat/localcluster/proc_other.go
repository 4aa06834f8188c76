//go:build unix && !linux

package localcluster

import (
	"os/exec"
	"syscall"
)

// sysProcAttr puts each child in a process group of its own (a terminal's
// Ctrl-C reaches only deploy/local/up, which stops the children in order).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

func startCmd(cmd *exec.Cmd) error { return cmd.Start() }
