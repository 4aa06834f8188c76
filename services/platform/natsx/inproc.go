package natsx

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
	"unsafe"

	"github.com/nats-io/nats-server/v2/server"
)

// createClientInProcess is nats-server's own start of an in-process client
// on conn ((*Server).InProcessConn calls it on its end of a net.Pipe). Its
// result, the server's *client, is not used.
//
//go:linkname createClientInProcess github.com/nats-io/nats-server/v2/server.(*Server).createClientInProcess
func createClientInProcess(s *server.Server, conn net.Conn) unsafe.Pointer

// bufferedInProcess connects nats.go to the embedded server through a
// buffered pipe (newBufferedPipe) instead of the net.Pipe of
// (*server.Server).InProcessConn. A net.Pipe's Write returns only once the
// other side has read all of it: every frame either side sends parks the
// writer, wakes the reader, and wakes the writer again, and the server's
// flush of several buffers (net.Buffers) does that once per buffer. Here a
// write appends to the other side's buffer and wakes the reader only if it
// waits: one hand-off per burst instead of two per buffer.
type bufferedInProcess struct{ s *server.Server }

// InProcessConn implements nats.InProcessConnProvider.
func (p bufferedInProcess) InProcessConn() (net.Conn, error) {
	if !p.s.Running() {
		return nil, errors.New("embedded nats: server not running")
	}
	client, srv := newBufferedPipe(inProcessPipeBuffer)
	go createClientInProcess(p.s, srv) // it writes INFO to srv first
	return client, nil
}

// inProcessPipeBuffer bounds the bytes a side of the pipe holds unread; a
// writer past it waits (or fails at its write deadline), as on a socket
// whose buffers are full.
const inProcessPipeBuffer = 4 << 20

// keptPipeBuffer is the largest buffer a drained side keeps for the next
// writes.
const keptPipeBuffer = 64 << 10

// newBufferedPipe returns the two ends of an in-memory, buffered,
// full-duplex connection.
func newBufferedPipe(max int) (net.Conn, net.Conn) {
	ab, ba := newPipeQueue(max), newPipeQueue(max)
	a := &pipeEnd{in: ba, out: ab, closed: make(chan struct{})}
	b := &pipeEnd{in: ab, out: ba, closed: make(chan struct{})}
	return a, b
}

// pipeQueue is one direction of a buffered pipe: bytes written and not
// yet read.
type pipeQueue struct {
	mu       sync.Mutex
	buf      []byte
	off      int  // buf[off:] is unread
	max      int  // bytes held at most
	readers  bool // a reader waits for data
	writers  bool // a writer waits for room
	shut     bool // either end closed: reads drain what is held, then EOF; writes fail
	readable chan struct{}
	writable chan struct{}
}

func newPipeQueue(max int) *pipeQueue {
	return &pipeQueue{max: max, readable: make(chan struct{}, 1), writable: make(chan struct{}, 1)}
}

func (q *pipeQueue) close() {
	q.mu.Lock()
	q.shut = true
	q.mu.Unlock()
	signal(q.readable)
	signal(q.writable)
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// pipeEnd is one end of a buffered pipe.
type pipeEnd struct {
	in, out *pipeQueue

	closeOnce sync.Once
	closed    chan struct{}

	dmu                     sync.Mutex
	readDeadline, writeDead time.Time
}

func (e *pipeEnd) Read(p []byte) (int, error) {
	q := e.in
	for {
		select {
		case <-e.closed:
			return 0, io.ErrClosedPipe
		default:
		}
		q.mu.Lock()
		if n := len(q.buf) - q.off; n > 0 {
			c := copy(p, q.buf[q.off:])
			q.off += c
			if q.off == len(q.buf) {
				q.buf, q.off = q.buf[:0], 0
				if cap(q.buf) > keptPipeBuffer {
					q.buf = nil // a burst's buffer is not held between bursts
				}
			}
			wake := q.writers
			q.writers = false
			q.mu.Unlock()
			if wake {
				signal(q.writable)
			}
			return c, nil
		}
		if q.shut {
			q.mu.Unlock()
			return 0, io.EOF
		}
		q.readers = true
		q.mu.Unlock()
		if err := e.wait(q.readable, true); err != nil {
			return 0, err
		}
	}
}

func (e *pipeEnd) Write(p []byte) (int, error) {
	q := e.out
	written := 0
	for {
		select {
		case <-e.closed:
			return written, io.ErrClosedPipe
		default:
		}
		q.mu.Lock()
		if q.shut {
			q.mu.Unlock()
			return written, io.ErrClosedPipe
		}
		if room := q.max - (len(q.buf) - q.off); room > 0 {
			if q.off > 0 && len(q.buf)+min(room, len(p)-written) > cap(q.buf) {
				// Move the unread bytes to the front before growing.
				q.buf = q.buf[:copy(q.buf, q.buf[q.off:])]
				q.off = 0
			}
			c := min(room, len(p)-written)
			q.buf = append(q.buf, p[written:written+c]...)
			written += c
			wake := q.readers
			q.readers = false
			q.mu.Unlock()
			if wake {
				signal(q.readable)
			}
			if written == len(p) {
				return written, nil
			}
			continue
		}
		q.writers = true
		q.mu.Unlock()
		if err := e.wait(q.writable, false); err != nil {
			return written, err
		}
	}
}

// wait waits for a signal on c, until the end is closed or the read (or
// write) deadline passes.
func (e *pipeEnd) wait(c chan struct{}, read bool) error {
	e.dmu.Lock()
	d := e.writeDead
	if read {
		d = e.readDeadline
	}
	e.dmu.Unlock()
	var timeout <-chan time.Time
	if !d.IsZero() {
		left := time.Until(d)
		if left <= 0 {
			return os.ErrDeadlineExceeded
		}
		t := time.NewTimer(left)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-c:
		return nil
	case <-e.closed:
		return io.ErrClosedPipe
	case <-timeout:
		return os.ErrDeadlineExceeded
	}
}

// Close closes both directions: the other end reads what is held, then EOF.
func (e *pipeEnd) Close() error {
	e.closeOnce.Do(func() {
		close(e.closed)
		e.in.close()
		e.out.close()
	})
	return nil
}

func (e *pipeEnd) LocalAddr() net.Addr  { return pipeAddr{} }
func (e *pipeEnd) RemoteAddr() net.Addr { return pipeAddr{} }

func (e *pipeEnd) SetDeadline(t time.Time) error {
	e.dmu.Lock()
	e.readDeadline, e.writeDead = t, t
	e.dmu.Unlock()
	return nil
}

func (e *pipeEnd) SetReadDeadline(t time.Time) error {
	e.dmu.Lock()
	e.readDeadline = t
	e.dmu.Unlock()
	return nil
}

func (e *pipeEnd) SetWriteDeadline(t time.Time) error {
	e.dmu.Lock()
	e.writeDead = t
	e.dmu.Unlock()
	return nil
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }
