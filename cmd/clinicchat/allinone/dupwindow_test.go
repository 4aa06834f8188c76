package allinone

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// ackHoldingProxy forwards a NATS client's TCP connection to the server and,
// while held, stops passing the server's bytes back (the publishes still
// reach the server and are stored; their acknowledgements wait).
type ackHoldingProxy struct {
	ln   net.Listener
	mu   sync.Mutex
	held bool
	wake chan struct{} // closed when the hold is released
}

func newAckHoldingProxy(t *testing.T, server string) *ackHoldingProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &ackHoldingProxy{ln: ln, wake: make(chan struct{})}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", server)
			if err != nil {
				_ = c.Close()
				continue
			}
			t.Cleanup(func() { _ = c.Close(); _ = s.Close() })
			go func() { _, _ = io.Copy(s, c) }()
			go p.back(c, s)
		}
	}()
	return p
}

// back copies the server's bytes to the client, waiting while held.
func (p *ackHoldingProxy) back(c, s net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := s.Read(buf)
		if n > 0 {
			p.mu.Lock()
			held, wake := p.held, p.wake
			p.mu.Unlock()
			if held {
				<-wake
			}
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *ackHoldingProxy) hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held, p.wake = true, make(chan struct{})
}

func (p *ackHoldingProxy) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held = false
	close(p.wake)
}

// The all-in-one's duplicate window covers its relays' republishing: an
// event stored whose acknowledgement does not come back within the relay's
// wait (outbox.DefaultAckWait) is sent again after the failed round's
// backoff, and again after the next one, each time well inside
// duplicateWindow of its first publish, so the server drops every copy and
// the stream holds the event once. The hold here lasts two failed rounds
// (two republishes); the time from the first publish to the second
// republish is what the window must outlast, with room to spare.
func TestDuplicateWindowOutlastsTheRelaysRepublishing(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for two of the relay's acknowledgement timeouts")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := freeLoopbackAddr(t)
	ns, local, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: t.TempDir(), Listen: addr}, zap.NewNop())
	require.NoError(t, err)
	t.Cleanup(func() { local.Close(); ns.Shutdown(); ns.WaitForShutdown() })
	ljs, err := jetstream.New(local)
	require.NoError(t, err)
	require.NoError(t, natsx.EnsureStreams(ctx, ljs, natsx.StreamsConfig{DuplicateWindow: duplicateWindow}))

	// Every publish of the event, as the server receives it (a core
	// subscription sees duplicates too).
	const id = "01JDCCCCCCCCCCCCCCCCCCCCCC"
	subject := natsx.Tenant(natsx.SubjectDeliveryAccess, "p")
	seen := make(chan time.Time, 16)
	sub, err := local.Subscribe(subject, func(m *nats.Msg) {
		if m.Header.Get(jetstream.MsgIDHeader) == id {
			seen <- time.Now()
		}
	})
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	require.NoError(t, local.Flush())

	proxy := newAckHoldingProxy(t, addr)
	nc, err := nats.Connect("nats://"+proxy.ln.Addr().String(), nats.MaxReconnects(-1))
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)

	db := testkit.OpenDB(t, testkit.Backends()[0])
	require.Equal(t, sqldb.SQLite, db.Dialect(), "the all-in-one's relays run on SQLite")
	_, err = db.Exec(ctx, `CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,
		subject TEXT NOT NULL, payload BLOB NOT NULL, created_at BIGINT NOT NULL, traceparent TEXT)`)
	require.NoError(t, err)
	relay := outbox.NewRelay(db, js, testkit.Logger(t))
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()

	proxy.hold()
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
		return outbox.Add(ctx, tx, id, subject, &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p"}})
	}))
	wait := func(what string) time.Time {
		t.Helper()
		select {
		case at := <-seen:
			return at
		case <-time.After(duplicateWindow):
			t.Fatalf("no %s within the duplicate window", what)
			return time.Time{}
		}
	}
	first := wait("first publish")
	wait("republish after the first timeout")
	last := wait("republish after the second timeout")
	proxy.release()

	took := last.Sub(first)
	t.Logf("second republish %s after the first publish (window %s)", took.Round(time.Millisecond), duplicateWindow)
	require.Greater(t, took, 2*outbox.DefaultAckWait, "two acknowledgement timeouts passed")
	require.Less(t, took, duplicateWindow*3/4, "the window outlasts two failed rounds with room to spare")

	stream, err := ljs.Stream(ctx, natsx.StreamDelivery)
	require.NoError(t, err)
	require.Eventually(t, func() bool { // the relay is acknowledged and deletes the row
		var n int
		require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n))
		return n == 0
	}, 10*time.Second, 20*time.Millisecond)
	info, err := stream.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.Msgs, "the republished event is stored once")
	cancel()
	require.NoError(t, <-done)
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}
