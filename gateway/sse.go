package gateway

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// sseWriter writes the text/event-stream framing. Blocks are buffered and
// written together by flush, one write per batch of queued events, each
// write bounded by a deadline. It writes either through net/http's
// ResponseWriter (HTTP/2) or straight to a connection taken over from
// net/http (HTTP/1.1, hijack.go).
type sseWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	raw net.Conn // set when the connection was taken over
	buf bytes.Buffer
	// writes, when set, counts the writes.
	writes prometheus.Counter
}

func newSSEWriter(w http.ResponseWriter) *sseWriter {
	return &sseWriter{w: w, rc: http.NewResponseController(w)}
}

// newRawSSEWriter writes to a connection taken over from net/http, whose
// response head is head (written with the first flush).
func newRawSSEWriter(c net.Conn, head []byte) *sseWriter {
	sw := &sseWriter{raw: c}
	sw.buf.Write(head)
	return sw
}

// detach frees a long response from the embedding server's WriteTimeout,
// if any (a whole-response deadline would end every stream); every write
// gets its own deadline instead.
func (sw *sseWriter) detach() {
	if sw.rc != nil {
		_ = sw.rc.SetWriteDeadline(time.Time{})
	}
}

// attach clears the per-write deadline before the connection is reused.
func (sw *sseWriter) attach() { sw.detach() }

// start sends the response headers (net/http's path; a taken-over
// connection's head is written by hijack.go).
func (sw *sseWriter) start() {
	setSSEHeaders(sw.w.Header())
	sw.w.WriteHeader(http.StatusOK)
}

// setSSEHeaders are the headers of an event stream, on top of those the
// middleware set.
func setSSEHeaders(h http.Header) {
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	h.Set("X-Content-Type-Options", "nosniff")
}

// sseKeepBuf is the largest block buffer a stream keeps between writes: a
// stream lives for hours, and one large message would otherwise pin a
// buffer its size for all of them (thousands of streams × 10 KB).
const sseKeepBuf = 4 << 10

// sseFlushAt is how much a batch of queued events buffers before it is
// written even though more are waiting.
const sseFlushAt = 32 << 10

// pending reports whether buffered blocks wait for flush.
func (sw *sseWriter) pending() bool { return sw.buf.Len() > 0 }

// full reports whether the buffered blocks should be written now.
func (sw *sseWriter) full() bool { return sw.buf.Len() >= sseFlushAt }

// flush writes the buffered blocks in one write and flushes them.
func (sw *sseWriter) flush() error {
	if sw.buf.Len() == 0 {
		return nil
	}
	if sw.writes != nil {
		sw.writes.Inc()
	}
	defer func() {
		if sw.buf.Cap() > sseKeepBuf {
			sw.buf = bytes.Buffer{}
		} else {
			sw.buf.Reset()
		}
	}()
	if sw.raw != nil {
		if err := sw.raw.SetWriteDeadline(time.Now().Add(sseWriteTimeout)); err != nil {
			return err
		}
		_, err := sw.raw.Write(sw.buf.Bytes())
		return err
	}
	if err := sw.rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	if _, err := sw.w.Write(sw.buf.Bytes()); err != nil {
		return err
	}
	return sw.rc.Flush()
}

// hello flushes the headers with an id-only block: it dispatches no event
// but gives EventSource a Last-Event-ID before the first event, so a
// reconnect misses nothing even then.
func (sw *sseWriter) hello(cur cursor) error {
	sw.buf.WriteString(": connected\nid: ")
	sw.buf.Write(cur.append(sw.buf.AvailableBuffer()))
	sw.buf.WriteString("\n\n")
	return sw.flush()
}

// event buffers one event; data is single-line JSON. flush writes it.
func (sw *sseWriter) event(event string, cur cursor, data []byte) {
	sw.buf.WriteString("event: ")
	sw.buf.WriteString(event)
	sw.buf.WriteString("\nid: ")
	sw.buf.Write(cur.append(sw.buf.AvailableBuffer()))
	sw.buf.WriteString("\ndata: ")
	sw.buf.Write(data)
	sw.buf.WriteString("\n\n")
}

// ping is the keep-alive comment; when the cursor moved it also updates
// the client's Last-Event-ID (an id-only block dispatches nothing).
func (sw *sseWriter) ping(cur cursor, withID bool) error {
	sw.buf.WriteString(": ping\n")
	if withID {
		sw.buf.WriteString("id: ")
		sw.buf.Write(cur.append(sw.buf.AvailableBuffer()))
		sw.buf.WriteString("\n")
	}
	sw.buf.WriteString("\n")
	return sw.flush()
}

// comment writes an SSE comment line.
func (sw *sseWriter) comment(text string) error {
	sw.buf.WriteString(": ")
	sw.buf.WriteString(text)
	sw.buf.WriteString("\n\n")
	return sw.flush()
}

// reset tells the client to reload; the stream ends after it.
func (sw *sseWriter) reset(reason string) error {
	sw.buf.WriteString("event: " + EventReset + "\ndata: {\"reason\":\"")
	sw.buf.WriteString(reason)
	sw.buf.WriteString("\"}\n\n")
	return sw.flush()
}
