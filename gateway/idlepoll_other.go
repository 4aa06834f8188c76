//go:build !linux

package gateway

import (
	"errors"
	"syscall"
)

// idlePollSupported: off here; an idle stream on a taken-over connection
// keeps its goroutine, waiting in a read of the connection (hijack.go).
const idlePollSupported = false

type idlePoller struct{}

func theIdlePoller() (*idlePoller, error) { return nil, errors.New("no idle poller on this OS") }

func (p *idlePoller) arm(*hijackedStream) error { return errors.New("no idle poller on this OS") }

func (p *idlePoller) remove(*hijackedStream) {}

func socketFD(syscall.RawConn) (int32, error) { return -1, errors.New("no idle poller on this OS") }

func peekClosed(syscall.RawConn) bool { return false }
