package gateway

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// An idle HTTP/1.1 event stream served by net/http costs two goroutines
// (the handler, deep in the middleware, with a grown stack; and the
// connection's background read) and ~10 KiB of net/http's buffers: most of
// a stream's memory. Once a stream is accepted, the gateway takes its
// connection over: it writes the response head itself, then the event
// stream with "Connection: close" (the body ends when the connection
// does), from its own small buffer. One fresh goroutine, with a small
// stack, serves it: it writes what is queued, then waits in a 1-byte read
// of the connection, which returns when the client disconnects (the
// stream ends at once, as with net/http's background read) or when the
// stream is woken (events, keep-alive, token expiry, shutdown) by a read
// deadline in the past. HTTP/2 cannot be taken over and stays on net/http.
//
// On Linux an idle stream holds no goroutine at all: once it has written
// what is queued it parks, its socket armed in the idle poller's epoll set
// (idlepoll_linux.go), and its goroutine returns. A wake (events,
// keep-alive, token expiry, shutdown) or the client sending something or
// hanging up starts a goroutine that looks (without waiting: a hang-up ends
// the stream at once), writes, and parks again. Thousands of idle streams
// then cost the collector no stacks to scan (BENCHMARKS.md, idle23).

// errNoHijack says the stream stays on net/http (HTTP/2, or turned off).
var errNoHijack = errors.New("event stream not taken over")

// aLongTimeAgo is a read deadline in the past: it wakes a blocked read.
var aLongTimeAgo = time.Unix(1, 0)

// hijackedStream is an event stream on a connection taken over from
// net/http.
type hijackedStream struct {
	s       *Server
	conn    net.Conn
	sw      *sseWriter
	expired atomic.Bool
	b       [1]byte // the wait's read

	// The idle poller's (nil: the stream waits in a read, wait):
	poller *idlePoller
	rc     syscall.RawConn
	fd     int32
	polled bool // in the poller's set; only the running goroutine uses it
	// state is hsRunning, hsPending or hsParked.
	state atomic.Int32
	// resume runs the stream again once woken while parked, on another
	// goroutine (streamResumers).
	resume func()
}

// A parked stream's states: running (a goroutine serves it), pending
// (running, and woken since it last looked: it looks again before it
// parks), parked (no goroutine; the next wake starts one).
const (
	hsRunning int32 = iota
	hsPending
	hsParked
)

// hijackStream takes the connection of an accepted HTTP/1.1 event stream
// over and prepares the head every stream response carries: the headers
// the middleware set (security headers, request id…) and the event-stream
// ones, as net/http would have written them, plus "Connection: close".
// errNoHijack: serve it through w.
func (s *Server) hijackStream(w http.ResponseWriter, r *http.Request) (*hijackedStream, error) {
	if r.ProtoMajor != 1 || s.noHijack {
		return nil, errNoHijack
	}
	h := w.Header()
	setSSEHeaders(h)
	h.Set("Connection", "close")
	if _, ok := h["Date"]; !ok {
		h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	var head bytes.Buffer
	head.WriteString("HTTP/1.1 200 OK\r\n")
	if err := h.Write(&head); err != nil {
		return nil, err
	}
	head.WriteString("\r\n")

	c, _, err := http.NewResponseController(w).Hijack()
	if errors.Is(err, http.ErrNotSupported) {
		h.Del("Connection")
		h.Del("Date")
		return nil, errNoHijack
	}
	if err != nil {
		return nil, err
	}
	// Whatever the client sent after its request (it should send nothing)
	// is left unread in net/http's buffer, which goes with it.
	hs := &hijackedStream{s: s, conn: c, sw: newRawSSEWriter(c, head.Bytes(), &s.sseBufs)}
	if sc, ok := c.(syscall.Conn); ok && idlePollSupported && !s.noIdlePoll {
		if p, err := theIdlePoller(); err == nil {
			if rc, err := sc.SyscallConn(); err == nil {
				if fd, err := socketFD(rc); err == nil {
					hs.poller, hs.rc, hs.fd = p, rc, fd
				}
			}
		}
	}
	s.raw.add(c, hs)
	return hs, nil
}

// wait reads the connection until the client disconnects (waitEnd) or the
// stream is woken. Bytes the client sends are discarded.
func (hs *hijackedStream) wait(st *eventStream) waitOutcome {
	for {
		// Cleared before looking: a wake from here on fails the read at
		// once, and one before it is seen below.
		_ = hs.conn.SetReadDeadline(time.Time{})
		select {
		case <-hs.s.closing:
			return waitEnd
		case <-st.c.wake:
			return waitWoken
		default:
		}
		if hs.expired.Load() {
			return waitExpired
		}
		if _, err := hs.conn.Read(hs.b[:]); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return waitEnd
		}
	}
}

// look is wait without waiting, for a stream that parks: false when there
// is nothing to do.
func (hs *hijackedStream) look(st *eventStream) (waitOutcome, bool) {
	select {
	case <-hs.s.closing:
		return waitEnd, true
	case <-st.c.wake:
		return waitWoken, true
	default:
	}
	if hs.expired.Load() {
		return waitExpired, true
	}
	if peekClosed(hs.rc) {
		return waitEnd, true
	}
	return 0, false
}

// park arms the stream's socket in the idle poller and lets its goroutine
// go: true when parked (the caller returns and touches the stream no
// more), false when it was woken since it last looked (it looks again).
func (hs *hijackedStream) park() (bool, error) {
	if err := hs.poller.arm(hs); err != nil {
		return false, err
	}
	if hs.state.CompareAndSwap(hsRunning, hsParked) {
		return true, nil
	}
	hs.state.Store(hsRunning) // it was hsPending
	return false, nil
}

// wake makes the stream look again: its wait's read fails at once, or,
// parked, a goroutine resumes it.
func (hs *hijackedStream) wake() {
	if hs.poller == nil {
		_ = hs.conn.SetReadDeadline(aLongTimeAgo)
		return
	}
	for {
		switch hs.state.Load() {
		case hsRunning:
			if hs.state.CompareAndSwap(hsRunning, hsPending) {
				return
			}
		case hsPending:
			return
		case hsParked:
			if hs.state.CompareAndSwap(hsParked, hsRunning) {
				streamResumers.run(hs.resume)
				return
			}
		}
	}
}

// expire ends the stream: the caller's token expired.
func (hs *hijackedStream) expire() {
	hs.expired.Store(true)
	hs.wake()
}

// close ends the connection once the stream has finished.
func (hs *hijackedStream) close() {
	if hs.poller != nil {
		hs.poller.remove(hs)
	}
	hs.s.raw.remove(hs.conn)
	_ = hs.conn.Close()
}

// rawConns are the connections taken over by event streams:
// http.Server.Shutdown does not see them, so Shutdown closes those whose
// streams outlive its deadline.
type rawConns struct {
	mu     sync.Mutex
	m      map[net.Conn]*hijackedStream
	closed bool
}

// add tracks c, hs's connection; closed at once if closeAll ran.
func (rc *rawConns) add(c net.Conn, hs *hijackedStream) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.closed {
		_ = c.Close()
		return
	}
	if rc.m == nil {
		rc.m = map[net.Conn]*hijackedStream{}
	}
	rc.m[c] = hs
}

func (rc *rawConns) remove(c net.Conn) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	delete(rc.m, c)
}

// wakeAll wakes every tracked stream's wait (Shutdown: they end).
func (rc *rawConns) wakeAll() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, hs := range rc.m {
		hs.wake()
	}
}

// closeAll closes every tracked connection and any added later.
func (rc *rawConns) closeAll() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.closed = true
	for c := range rc.m {
		_ = c.Close()
	}
}
