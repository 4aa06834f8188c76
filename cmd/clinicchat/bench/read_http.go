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

// readAnswer reads one HTTP/1.1 answer (net/http's parser: Content-Length,
// chunked bodies and trailers) and its body, at most maxAnswer bytes, into
// c.body.
func (c *rawConn) readAnswer() (status int, keep bool, err error) {
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
