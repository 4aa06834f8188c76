package natsx

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// Both directions carry every byte in order, with concurrent readers and
// writers on each side and writes larger than the buffer (which must then
// wait for room rather than fail or drop).
func TestBufferedPipeCarriesEveryByteInOrder(t *testing.T) {
	a, b := newBufferedPipe(1000)
	const total = 1 << 20
	src := make([]byte, total)
	for i := range src {
		src[i] = byte(i * 7)
	}
	var wg sync.WaitGroup
	send := func(c io.Writer) {
		defer wg.Done()
		for off, n := 0, 1; off < total; n = n*3%4093 + 1 {
			end := min(off+n, total)
			if _, err := c.Write(src[off:end]); err != nil {
				t.Errorf("write: %v", err)
				return
			}
			off = end
		}
	}
	got := make([][]byte, 2)
	recv := func(c io.Reader, i int) {
		defer wg.Done()
		buf := make([]byte, 777)
		for len(got[i]) < total {
			n, err := c.Read(buf)
			if err != nil {
				t.Errorf("read: %v", err)
				return
			}
			got[i] = append(got[i], buf[:n]...)
		}
	}
	wg.Add(4)
	go send(a)
	go send(b)
	go recv(b, 0)
	go recv(a, 1)
	wg.Wait()
	for i := range got {
		if !bytes.Equal(got[i], src) {
			t.Fatalf("direction %d: the bytes read differ from those written (%d of %d)", i, len(got[i]), total)
		}
	}
}

// Closing one end: the other reads what was written before, then EOF, and
// its writes fail; the closed end's own reads and writes fail at once.
func TestBufferedPipeClose(t *testing.T) {
	a, b := newBufferedPipe(1 << 10)
	if _, err := a.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	blocked := make(chan error, 1)
	go func() { // b's reader gets the bytes; a second read waits until the close
		buf := make([]byte, 64)
		n, err := b.Read(buf)
		if err != nil || string(buf[:n]) != "last words" {
			blocked <- errors.New("first read: " + string(buf[:n]))
			return
		}
		_, err = b.Read(buf)
		blocked <- err
	}()
	a.Close()
	if err := <-blocked; err != io.EOF {
		t.Fatalf("read after the other end closed: %v, want EOF", err)
	}
	if _, err := b.Write([]byte("x")); err == nil {
		t.Fatal("write to a closed pipe succeeded")
	}
	if _, err := a.Read(make([]byte, 1)); err == nil {
		t.Fatal("read on the closed end succeeded")
	}
	if _, err := a.Write([]byte("x")); err == nil {
		t.Fatal("write on the closed end succeeded")
	}
}

// A read with nothing to read, and a write with no room, end at their
// deadline; a write within the buffer does not wait for a reader.
func TestBufferedPipeDeadlines(t *testing.T) {
	a, b := newBufferedPipe(8)
	if n, err := a.Write([]byte("12345678")); err != nil || n != 8 {
		t.Fatalf("write within the buffer: %d, %v", n, err)
	}
	a.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
	if n, err := a.Write([]byte("9")); !errors.Is(err, os.ErrDeadlineExceeded) || n != 0 {
		t.Fatalf("write into a full buffer: %d, %v; want the deadline", n, err)
	}
	b.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 16)
	if n, err := b.Read(buf); err != nil || string(buf[:n]) != "12345678" {
		t.Fatalf("read: %q, %v", buf[:n], err)
	}
	b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := b.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read of an empty pipe: %v; want the deadline", err)
	}
	b.SetReadDeadline(time.Time{})
	a.SetWriteDeadline(time.Time{})
	if _, err := a.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Read(buf); err != nil || string(buf[:n]) != "ok" {
		t.Fatalf("read after the deadlines were cleared: %q, %v", buf[:n], err)
	}
}

// The embedded server's client runs over the buffered pipe: requests,
// replies and JetStream work through it, and a reconnect gets a new pipe.
func TestEmbeddedClientOverBufferedPipe(t *testing.T) {
	ns, nc, err := StartEmbedded(EmbeddedConfig{StoreDir: t.TempDir()}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	defer nc.Close()
	if _, ok := nc.Opts.InProcessServer.(bufferedInProcess); !ok {
		t.Fatalf("in-process provider is %T, want bufferedInProcess", nc.Opts.InProcessServer)
	}
	sub, err := nc.Subscribe("echo", func(m *nats.Msg) { m.Respond(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	big := bytes.Repeat([]byte("z"), 512<<10)
	for i, body := range [][]byte{[]byte("hi"), big} {
		r, err := nc.Request("echo", body, 5*time.Second)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if !bytes.Equal(r.Data, body) {
			t.Fatalf("request %d: reply of %d bytes, want %d", i, len(r.Data), len(body))
		}
	}
	reconnected := make(chan struct{}, 1)
	nc.SetReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} })
	nc.ForceReconnect()
	select {
	case <-reconnected:
	case <-time.After(10 * time.Second):
		t.Fatal("no reconnect")
	}
	if r, err := nc.Request("echo", []byte("again"), 5*time.Second); err != nil || string(r.Data) != "again" {
		t.Fatalf("request after the reconnect: %v", err)
	}
}
