package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// rawMarker marks read through the gateway (POST /v1/{conversation}:markRead,
// as httpMarker) over one keep-alive HTTP/1.1 connection per thread,
// written and read by the thread's own goroutine: the request's bytes are
// built once per thread but for upTo, and the answer is read into one
// buffer and dropped. net/http's client spends several times that per call
// on its request and header maps, its connection's reader and writer
// goroutines and their hand-offs; in read mode that is CPU the server, on
// the same cores, does not get. Plain http:// only (newRawMarker answers nil
// otherwise, and read mode uses httpMarker).
type rawMarker struct {
	mu    sync.Mutex
	conns map[*thread]*rawConn
}

type rawConn struct {
	conn   net.Conn
	br     *bufio.Reader
	head   []byte // the request up to the Content-Length value
	req    []byte // the request being written
	esc    []byte // upTo as a JSON string
	body   []byte // the answer's body
	stopFn func() bool
}

// newRawMarker returns a rawMarker when every thread's patient calls a base
// URL of the form http://host[:port] (no path), else nil.
func newRawMarker(threads []*thread) *rawMarker {
	for _, th := range threads {
		if _, _, ok := hostOf(th.patient.url); !ok {
			return nil
		}
	}
	return &rawMarker{conns: map[*thread]*rawConn{}}
}

// hostOf is the dial address and Host header of an http:// base URL.
func hostOf(base string) (addr, host string, ok bool) {
	rest, ok := strings.CutPrefix(base, "http://")
	rest = strings.TrimSuffix(rest, "/")
	if !ok || rest == "" || strings.ContainsAny(rest, "/?#@") {
		return "", "", false
	}
	addr = rest
	if _, _, err := net.SplitHostPort(rest); err != nil {
		addr = net.JoinHostPort(rest, "80")
	}
	return addr, rest, true
}

// close closes every connection.
func (r *rawMarker) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for th, c := range r.conns {
		c.close()
		delete(r.conns, th)
	}
}

func (c *rawConn) close() {
	c.stopFn()
	c.conn.Close()
}

// conn is th's connection, dialled on first use. One goroutine marks a
// thread read at a time (read mode's), so the connection is its alone.
func (r *rawMarker) conn(ctx context.Context, th *thread) (*rawConn, error) {
	r.mu.Lock()
	c := r.conns[th]
	r.mu.Unlock()
	if c != nil {
		return c, nil
	}
	addr, host, _ := hostOf(th.patient.url)
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	head := fmt.Appendf(nil, "POST /v1/%s:markRead HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n", th.conv, host)
	if th.patient.token != "" {
		head = fmt.Appendf(head, "Authorization: Bearer %s\r\n", th.patient.token)
	}
	head = append(head, "Content-Length: "...)
	c = &rawConn{conn: nc, br: bufio.NewReaderSize(nc, 8<<10), head: head}
	c.stopFn = context.AfterFunc(ctx, func() { nc.Close() }) // a cancelled run ends a call in flight
	r.mu.Lock()
	r.conns[th] = c
	r.mu.Unlock()
	return c, nil
}

// drop forgets th's connection after a failed call: the next call dials
// again (a connection whose answer was not read to its end cannot be used
// again).
func (r *rawMarker) drop(th *thread, c *rawConn) {
	r.mu.Lock()
	if r.conns[th] == c {
		delete(r.conns, th)
	}
	r.mu.Unlock()
	c.close()
}

func (r *rawMarker) markRead(ctx context.Context, th *thread, upTo string) error {
	c, err := r.conn(ctx, th)
	if err != nil {
		return err
	}
	status, keep, err := c.roundTrip(upTo)
	if !keep {
		r.drop(th, c)
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	if status != http.StatusOK {
		return apiErrorOf(status, c.body)
	}
	return nil
}

// roundTrip writes the markRead of upTo and reads its answer into c.body;
// keep is false when the connection cannot carry another call.
func (c *rawConn) roundTrip(upTo string) (status int, keep bool, err error) {
	c.esc = appendJSONString(c.esc[:0], upTo)
	req := append(c.req[:0], c.head...)
	req = strconv.AppendInt(req, int64(len(`{"upTo":}`)+len(c.esc)), 10)
	req = append(req, "\r\n\r\n{\"upTo\":"...)
	req = append(append(req, c.esc...), '}')
	c.req = req
	if _, err := c.conn.Write(req); err != nil {
		return 0, false, err
	}
	return c.readAnswer()
}

// readAnswer reads one HTTP/1.1 answer and its body, at most maxAnswer
// bytes, into c.body. The gateway's answer to a markRead is a status line
// and a few headers with a Content-Length: that form is read here
// (plainHead), without net/http's header map, textproto reader and
// Response (about a fifth of the client's CPU per markRead). Any other
// (chunked, no length, a folded or odd header, a head larger than the
// reader's buffer) goes through net/http's parser, which reads chunked
// bodies and trailers.
func (c *rawConn) readAnswer() (status int, keep bool, err error) {
	if status, length, keep, n, ok := plainHead(c.br); ok {
		if length > maxAnswer {
			return 0, false, fmt.Errorf("markRead: answer of more than %d bytes", maxAnswer)
		}
		_, _ = c.br.Discard(n) // buffered: cannot fail
		c.body = slices.Grow(c.body[:0], length)[:length]
		if _, err := io.ReadFull(c.br, c.body); err != nil {
			return 0, false, fmt.Errorf("markRead: %w", err)
		}
		return status, keep, nil
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, false, fmt.Errorf("markRead: %w", err)
	}
	defer resp.Body.Close()
	body := bytes.NewBuffer(c.body[:0])
	n, err := body.ReadFrom(io.LimitReader(resp.Body, maxAnswer+1))
	c.body = body.Bytes()
	switch {
	case err != nil:
		return 0, false, err
	case n > maxAnswer:
		return 0, false, fmt.Errorf("markRead: answer of more than %d bytes", maxAnswer)
	}
	return resp.StatusCode, !resp.Close, nil
}

// plainHead parses the head of the next answer in br, without consuming
// it, when it is an HTTP/1.1 status line and header fields with one
// Content-Length, no Transfer-Encoding and no folded lines, and it ends
// within br's buffer: the status, the body's length, whether the
// connection carries another call (no "Connection: close"), and the
// head's length in bytes. ok is false for any other answer, and when the
// connection fails before the head's end (http.ReadResponse then reads
// what is buffered and reports the error).
func plainHead(br *bufio.Reader) (status, length int, keep bool, n int, ok bool) {
	var head []byte
	for {
		buf, _ := br.Peek(br.Buffered())
		if i := bytes.Index(buf, []byte("\r\n\r\n")); i >= 0 {
			head = buf[:i+2] // the last field's CRLF, not the blank line's
			n = i + 4
			break
		}
		if br.Buffered() == br.Size() {
			return 0, 0, false, 0, false
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return 0, 0, false, 0, false
		}
	}
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	code, ok := bytes.CutPrefix(line, []byte("HTTP/1.1 "))
	if !ok || len(code) < 3 || (len(code) > 3 && code[3] != ' ') {
		return 0, 0, false, 0, false
	}
	for _, d := range code[:3] {
		if d < '0' || d > '9' {
			return 0, 0, false, 0, false
		}
		status = status*10 + int(d-'0')
	}
	if status < 200 || status == http.StatusNoContent || status == http.StatusNotModified {
		return 0, 0, false, 0, false // no body, or not the final answer
	}
	length, keep = -1, true
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, found := bytes.Cut(line, []byte(":"))
		if !found || len(name) == 0 || name[0] == ' ' || name[0] == '\t' || bytes.ContainsAny(name, " \t") {
			return 0, 0, false, 0, false // folded or malformed: net/http judges
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length >= 0 || len(value) == 0 || len(value) > 9 {
				return 0, 0, false, 0, false
			}
			length = 0
			for _, d := range value {
				if d < '0' || d > '9' {
					return 0, 0, false, 0, false
				}
				length = length*10 + int(d-'0')
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return 0, 0, false, 0, false
		case bytes.EqualFold(name, []byte("Connection")):
			for tok := range bytes.SplitSeq(value, []byte(",")) {
				if bytes.EqualFold(bytes.TrimSpace(tok), []byte("close")) {
					keep = false
				}
			}
		}
	}
	if length < 0 {
		return 0, 0, false, 0, false
	}
	return status, length, keep, n, true
}

// maxAnswer bounds a markRead answer the bench reads (the thread's view).
const maxAnswer = 4 << 20

// apiErrorOf is a refused call's *apiError, with the SPEC reason when the
// body has one.
func apiErrorOf(status int, raw []byte) error {
	ae := &apiError{status: status}
	var st struct {
		Details []struct {
			Reason string `json:"reason"`
		} `json:"details"`
	}
	if json.Unmarshal(raw, &st) == nil {
		for _, d := range st.Details {
			if d.Reason != "" {
				ae.reason = d.Reason
			}
		}
	}
	return ae
}
