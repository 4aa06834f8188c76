package gateway

import (
	"bytes"
	"errors"
	"net/http"
	"time"
)

// sseWriter writes the text/event-stream framing, flushing every block and
// bounding every write.
type sseWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf bytes.Buffer
}

func newSSEWriter(w http.ResponseWriter) *sseWriter {
	return &sseWriter{w: w, rc: http.NewResponseController(w)}
}

// detach frees a long response from the embedding server's WriteTimeout,
// if any (a whole-response deadline would end every stream); every write
// gets its own deadline instead.
func (sw *sseWriter) detach() { _ = sw.rc.SetWriteDeadline(time.Time{}) }

// attach clears the per-write deadline before the connection is reused.
func (sw *sseWriter) attach() { _ = sw.rc.SetWriteDeadline(time.Time{}) }

// start sends the response headers.
func (sw *sseWriter) start() {
	h := sw.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	h.Set("X-Content-Type-Options", "nosniff")
	sw.w.WriteHeader(http.StatusOK)
}

// sseKeepBuf is the largest block buffer a stream keeps between writes: a
// stream lives for hours, and one large message would otherwise pin a
// buffer its size for all of them (thousands of streams × 10 KB).
const sseKeepBuf = 4 << 10

// send writes the buffered block and flushes it.
func (sw *sseWriter) send() error {
	defer func() {
		if sw.buf.Cap() > sseKeepBuf {
			sw.buf = bytes.Buffer{}
		} else {
			sw.buf.Reset()
		}
	}()
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
	sw.buf.WriteString(cur.String())
	sw.buf.WriteString("\n\n")
	return sw.send()
}

// event writes one event; data is single-line JSON.
func (sw *sseWriter) event(event string, cur cursor, data []byte) error {
	sw.buf.WriteString("event: ")
	sw.buf.WriteString(event)
	sw.buf.WriteString("\nid: ")
	sw.buf.WriteString(cur.String())
	sw.buf.WriteString("\ndata: ")
	sw.buf.Write(data)
	sw.buf.WriteString("\n\n")
	return sw.send()
}

// ping is the keep-alive comment; when the cursor moved it also updates
// the client's Last-Event-ID (an id-only block dispatches nothing).
func (sw *sseWriter) ping(cur cursor, withID bool) error {
	sw.buf.WriteString(": ping\n")
	if withID {
		sw.buf.WriteString("id: ")
		sw.buf.WriteString(cur.String())
		sw.buf.WriteString("\n")
	}
	sw.buf.WriteString("\n")
	return sw.send()
}

// comment writes an SSE comment line.
func (sw *sseWriter) comment(text string) error {
	sw.buf.WriteString(": ")
	sw.buf.WriteString(text)
	sw.buf.WriteString("\n\n")
	return sw.send()
}

// reset tells the client to reload; the stream ends after it.
func (sw *sseWriter) reset(reason string) error {
	sw.buf.WriteString("event: " + EventReset + "\ndata: {\"reason\":\"")
	sw.buf.WriteString(reason)
	sw.buf.WriteString("\"}\n\n")
	return sw.send()
}
