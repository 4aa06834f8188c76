package gateway

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
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
}

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
	s.raw.add(c)
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

// wake makes the stream's wait look again.
func (hs *hijackedStream) wake() { _ = hs.conn.SetReadDeadline(aLongTimeAgo) }

// expire ends the stream: the caller's token expired.
func (hs *hijackedStream) expire() {
	hs.expired.Store(true)
	hs.wake()
}

// close ends the connection once the stream has finished.
func (hs *hijackedStream) close() {
	hs.s.raw.remove(hs.conn)
	_ = hs.conn.Close()
}

// rawConns are the connections taken over by event streams:
// http.Server.Shutdown does not see them, so Shutdown closes those whose
// streams outlive its deadline.
type rawConns struct {
	mu     sync.Mutex
	m      map[net.Conn]struct{}
	closed bool
}

// add tracks c; closed at once if closeAll ran.
func (rc *rawConns) add(c net.Conn) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.closed {
		_ = c.Close()
		return
	}
	if rc.m == nil {
		rc.m = map[net.Conn]struct{}{}
	}
	rc.m[c] = struct{}{}
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
	for c := range rc.m {
		_ = c.SetReadDeadline(aLongTimeAgo)
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
