package gateway

import (
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// sseWriter writes the text/event-stream framing. Blocks are buffered and
// written together by flush, one write per batch of queued events, each
// write bounded by a deadline. It writes either through net/http's
// ResponseWriter (HTTP/2) or straight to a connection taken over from
// net/http (HTTP/1.1, hijack.go).
//
// The block buffer is taken from bufs (shared by every stream of the
// gateway) for a batch and given back once it is written: a stream between
// writes holds none, and a batch starts in a buffer a previous batch grew,
// instead of growing a fresh one (a stream used to keep at most 4 KiB and
// grow a new buffer for every batch larger than that: 17% of the
// all-in-one's allocated bytes in read mode; BENCHMARKS.md, gw16).
type sseWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	raw net.Conn // set when the connection was taken over
	buf []byte   // the blocks not yet written; nil between batches
	box *[]byte  // buf's box from bufs (put back with the buffer)
	// bufs is where buf comes from and goes back to (nil: made for the
	// batch).
	bufs *sseBufs
	// writes, when set, counts the writes.
	writes prometheus.Counter
}

// sseBufs are block buffers lent to streams for one batch each.
type sseBufs struct{ pool sync.Pool }

// sseBufSize is the capacity of a new block buffer: a batch of a few
// events.
const sseBufSize = 4 << 10

// sseKeepBuf is the largest block buffer given back to sseBufs: one large
// batch (thousands of streams × a 10 KB message) does not stay pinned in
// the pool at its size.
const sseKeepBuf = 64 << 10

// get is an empty buffer, in the box it is given back in.
func (p *sseBufs) get() *[]byte {
	if p != nil {
		if b, ok := p.pool.Get().(*[]byte); ok {
			*b = (*b)[:0]
			return b
		}
	}
	b := make([]byte, 0, sseBufSize)
	return &b
}

// put gives b back (dropped when too large).
func (p *sseBufs) put(b *[]byte) {
	if p == nil || cap(*b) > sseKeepBuf {
		return
	}
	p.pool.Put(b)
}

func newSSEWriter(w http.ResponseWriter, bufs *sseBufs) *sseWriter {
	return &sseWriter{w: w, rc: http.NewResponseController(w), bufs: bufs}
}

// newRawSSEWriter writes to a connection taken over from net/http, whose
// response head is head (written with the first flush).
func newRawSSEWriter(c net.Conn, head []byte, bufs *sseBufs) *sseWriter {
	sw := &sseWriter{raw: c, bufs: bufs}
	sw.append(head...)
	return sw
}

// append buffers b, taking a buffer first if the writer holds none.
func (sw *sseWriter) append(b ...byte) {
	if sw.buf == nil {
		sw.box = sw.bufs.get()
		sw.buf = *sw.box
	}
	sw.buf = append(sw.buf, b...)
}

// appendString buffers s, as append.
func (sw *sseWriter) appendString(s string) {
	if sw.buf == nil {
		sw.box = sw.bufs.get()
		sw.buf = *sw.box
	}
	sw.buf = append(sw.buf, s...)
}

// appendCursor buffers cur's text form, as append.
func (sw *sseWriter) appendCursor(cur cursor) {
	if sw.buf == nil {
		sw.box = sw.bufs.get()
		sw.buf = *sw.box
	}
	sw.buf = cur.append(sw.buf)
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

// sseFlushAt is how much a batch of queued events buffers before it is
// written even though more are waiting.
const sseFlushAt = 32 << 10

// pending reports whether buffered blocks wait for flush.
func (sw *sseWriter) pending() bool { return len(sw.buf) > 0 }

// full reports whether the buffered blocks should be written now.
func (sw *sseWriter) full() bool { return len(sw.buf) >= sseFlushAt }

// flush writes the buffered blocks in one write and flushes them.
func (sw *sseWriter) flush() error {
	if len(sw.buf) == 0 {
		return nil
	}
	if sw.writes != nil {
		sw.writes.Inc()
	}
	buf, box := sw.buf, sw.box
	sw.buf, sw.box = nil, nil
	defer func() {
		*box = buf
		sw.bufs.put(box)
	}()
	if sw.raw != nil {
		if err := sw.raw.SetWriteDeadline(time.Now().Add(sseWriteTimeout)); err != nil {
			return err
		}
		_, err := sw.raw.Write(buf)
		return err
	}
	if err := sw.rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	if _, err := sw.w.Write(buf); err != nil {
		return err
	}
	return sw.rc.Flush()
}

// hello flushes the headers with an id-only block: it dispatches no event
// but gives EventSource a Last-Event-ID before the first event, so a
// reconnect misses nothing even then.
func (sw *sseWriter) hello(cur cursor) error {
	sw.appendString(": connected\nid: ")
	sw.appendCursor(cur)
	sw.appendString("\n\n")
	return sw.flush()
}

// event buffers one event; data is single-line JSON. flush writes it.
func (sw *sseWriter) event(event string, cur cursor, data []byte) {
	sw.appendString("event: ")
	sw.appendString(event)
	sw.appendString("\nid: ")
	sw.appendCursor(cur)
	sw.appendString("\ndata: ")
	sw.append(data...)
	sw.appendString("\n\n")
}

// ping is the keep-alive comment; when the cursor moved it also updates
// the client's Last-Event-ID (an id-only block dispatches nothing).
func (sw *sseWriter) ping(cur cursor, withID bool) error {
	sw.appendString(": ping\n")
	if withID {
		sw.appendString("id: ")
		sw.appendCursor(cur)
		sw.appendString("\n")
	}
	sw.appendString("\n")
	return sw.flush()
}

// comment writes an SSE comment line.
func (sw *sseWriter) comment(text string) error {
	sw.appendString(": ")
	sw.appendString(text)
	sw.appendString("\n\n")
	return sw.flush()
}

// reset tells the client to reload; the stream ends after it.
func (sw *sseWriter) reset(reason string) error {
	sw.appendString("event: " + EventReset + "\ndata: {\"reason\":\"")
	sw.appendString(reason)
	sw.appendString("\"}\n\n")
	return sw.flush()
}
