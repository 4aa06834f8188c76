package gateway

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
)

// An idle HTTP/1.1 event stream served by net/http costs two goroutines
// (the handler, deep in the middleware, with a grown stack; and the
// connection's background read) and ~10 KiB of net/http's buffers: most of
// a stream's memory. Once a stream is accepted, the gateway takes its
// connection over: it writes the response head itself, then the event
// stream with "Connection: close" (the body ends when the connection
// does), from its own small buffer. Two fresh goroutines serve it, with
// small stacks: the writer, and a reader parked in a 1-byte read that
// ends the stream when the client disconnects (as net/http's background
// read did). HTTP/2 cannot be taken over and stays on net/http.

// errNoHijack says the stream stays on net/http (HTTP/2, or turned off).
var errNoHijack = errors.New("event stream not taken over")

// hijackedStream is an event stream on a connection taken over from
// net/http.
type hijackedStream struct {
	s      *Server
	conn   net.Conn
	sw     *sseWriter
	ctx    context.Context // ends when the client disconnects or the stream closes
	cancel context.CancelFunc
	read   chan struct{} // closed when the reader has returned
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
	ctx, cancel := context.WithCancel(context.Background())
	hs := &hijackedStream{s: s, conn: c, sw: newRawSSEWriter(c, head.Bytes()), ctx: ctx, cancel: cancel,
		read: make(chan struct{})}
	if !s.raw.add(c) {
		// Shutdown closed the connections already: end at once.
		cancel()
	}
	go hs.readUntilGone()
	return hs, nil
}

// readUntilGone waits for the client to disconnect (or the connection to
// be closed) and ends the stream. Bytes the client sends are discarded.
func (hs *hijackedStream) readUntilGone() {
	defer close(hs.read)
	defer hs.cancel()
	var b [1]byte
	for {
		if _, err := hs.conn.Read(b[:]); err != nil {
			return
		}
	}
}

// close ends the connection once the stream has finished writing, and
// waits for its reader.
func (hs *hijackedStream) close() {
	hs.cancel()
	hs.s.raw.remove(hs.conn)
	_ = hs.conn.Close()
	<-hs.read
}

// rawConns are the connections taken over by event streams:
// http.Server.Shutdown does not see them, so Shutdown closes those whose
// streams outlive its deadline.
type rawConns struct {
	mu     sync.Mutex
	m      map[net.Conn]struct{}
	closed bool
}

// add tracks c; false once closeAll ran.
func (rc *rawConns) add(c net.Conn) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.closed {
		return false
	}
	if rc.m == nil {
		rc.m = map[net.Conn]struct{}{}
	}
	rc.m[c] = struct{}{}
	return true
}

func (rc *rawConns) remove(c net.Conn) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	delete(rc.m, c)
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
