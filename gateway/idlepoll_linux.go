package gateway

import (
	"errors"
	"sync"
	"syscall"
)

// idlePollSupported: an idle stream on a taken-over connection parks in the
// idle poller and holds no goroutine (idlepoll_other.go: it waits in a read).
const idlePollSupported = true

// idlePoller is the process's one wait for the parked event streams'
// connections: an epoll set of their sockets, each armed once per park
// (EPOLLONESHOT), and one goroutine, blocked in epoll_wait, that wakes a
// stream whose client sent something or hung up. A parked stream holds
// no goroutine and no stack, so thousands of idle streams cost the
// collector no stack scans (BENCHMARKS.md, idle23). Go's own netpoller
// keeps the sockets too (writes still go through it); a socket may be in
// both sets.
type idlePoller struct {
	epfd int
	mu   sync.Mutex
	fds  map[int32]*hijackedStream
}

var (
	idlePollOnce sync.Once
	idlePoll     *idlePoller
	idlePollErr  error
)

// theIdlePoller starts the poller on first use.
func theIdlePoller() (*idlePoller, error) {
	idlePollOnce.Do(func() {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			idlePollErr = err
			return
		}
		idlePoll = &idlePoller{epfd: fd, fds: map[int32]*hijackedStream{}}
		go idlePoll.run()
	})
	return idlePoll, idlePollErr
}

const idlePollEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLHUP | syscall.EPOLLERR | syscall.EPOLLONESHOT

// arm makes the next readability or hang-up of hs's socket wake hs once.
func (p *idlePoller) arm(hs *hijackedStream) error {
	ev := syscall.EpollEvent{Events: idlePollEvents, Fd: hs.fd}
	if hs.polled {
		return syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, int(hs.fd), &ev)
	}
	p.mu.Lock()
	p.fds[hs.fd] = hs
	p.mu.Unlock()
	if err := syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(hs.fd), &ev); err != nil {
		p.mu.Lock()
		delete(p.fds, hs.fd)
		p.mu.Unlock()
		return err
	}
	hs.polled = true
	return nil
}

// remove takes hs's socket out of the set, before it is closed (its
// number may be reused at once).
func (p *idlePoller) remove(hs *hijackedStream) {
	if !hs.polled {
		return
	}
	hs.polled = false
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fds[hs.fd] == hs { // else the socket was closed (closeAll) and its number reused
		delete(p.fds, hs.fd)
		_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, int(hs.fd), nil)
	}
}

func (p *idlePoller) run() {
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			panic("gateway: idle streams' epoll_wait: " + err.Error())
		}
		for _, ev := range events[:n] {
			p.mu.Lock()
			hs := p.fds[ev.Fd]
			p.mu.Unlock()
			if hs != nil {
				hs.wake()
			}
		}
	}
}

// socketFD is rc's socket, for the idle poller.
func socketFD(rc syscall.RawConn) (int32, error) {
	fd := int32(-1)
	if err := rc.Control(func(s uintptr) { fd = int32(s) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// peekClosed reads (without waiting) and discards what the client sent,
// and reports whether it hung up or the connection failed.
func peekClosed(rc syscall.RawConn) bool {
	closed := false
	err := rc.Control(func(fd uintptr) {
		var b [64]byte
		for {
			n, err := syscall.Read(int(fd), b[:])
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				return
			case err != nil || n == 0:
				closed = true
				return
			}
		}
	})
	return closed || err != nil
}
