package outbox_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// heldPub keeps the publishes made while armed in a queue (bytes a frozen
// process has in its client's buffer) until thaw sends them, in order.
type heldPub struct {
	armed  bool
	mu     sync.Mutex
	nc     *nats.Conn
	queue  []*nats.Msg
	queued chan struct{}
}

func (h *heldPub) publish(m *nats.Msg, nc *nats.Conn) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.armed {
		return nc.PublishMsg(m)
	}
	h.nc, h.queue = nc, append(h.queue, m)
	h.queued <- struct{}{}
	return nil
}

// thaw sends the held publishes, waits for their outcomes and hands them
// to the relay.
func (h *heldPub) thaw() {
	h.mu.Lock()
	q := h.queue
	h.queue, h.armed = nil, false
	h.mu.Unlock()
	var sent []*intercepted
	for _, m := range q {
		if i, err := publishIntercepted(h.nc, m); err == nil {
			sent = append(sent, i)
		}
	}
	for _, i := range sent {
		_ = i.forward()
	}
}

// intercepted is a relay's publish sent with a reply inbox of the test's,
// so that the test holds the server's answer before the relay has it.
type intercepted struct {
	nc    *nats.Conn
	sub   *nats.Subscription
	reply string // the relay's own
}

func publishIntercepted(nc *nats.Conn, m *nats.Msg) (*intercepted, error) {
	sub, err := nc.SubscribeSync(nc.NewInbox())
	if err != nil {
		return nil, err
	}
	i := &intercepted{nc: nc, sub: sub, reply: m.Reply}
	m.Reply = sub.Subject
	if err := nc.PublishMsg(m); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	return i, nil
}

// forward waits for the server's answer and hands it to the relay.
func (i *intercepted) forward() error {
	defer func() { _ = i.sub.Unsubscribe() }()
	a, err := i.sub.NextMsg(30 * time.Second)
	if err != nil {
		return err
	}
	return i.nc.PublishMsg(&nats.Msg{Subject: i.reply, Data: a.Data, Header: a.Header})
}

// KNOWN GAP (RELIABILITY.md, "frozen past its lease"): a PostgreSQL relay
// frozen past its lease with a chained batch in its NATS client's buffer can
// have a thread's later row stored ahead of an earlier one when it thaws.
// A (stream's last sequence L known) reads a1 and a2 of thread t2 and sends
// them expecting L and L+1; its bytes wait in the buffer. z, of another
// thread, took a lower seq and committed after A's read. A's lease runs out;
// B takes the outbox and sends z (stored at L+1); A thaws: a1 (expects L) is
// refused, a2 (expects L+1) finds the stream at L+1 and is stored; then B's
// a1 is stored after it. Waves (every round's rows sent only after the
// earlier rows of their subject are acknowledged) have no such gap; this
// test pins the gap so that a fix has to change it.
func TestFrozenPostgresRelayCanStoreALaterRowFirst(t *testing.T) {
	ctx := context.Background()
	_, _, js := testkit.NATS(t)
	dbA, dbB := openPostgresTwice(t)
	write := func(db *sqldb.DB, thread string, ids ...string) {
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
			for _, id := range ids {
				if err := outbox.Add(ctx, tx, id, natsx.Tenant(natsx.SubjectDeliveryAccess, "p", thread),
					&typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p", Resource: thread}}); err != nil {
					return err
				}
			}
			return nil
		}))
	}
	hA := &heldPub{queued: make(chan struct{}, 16)}
	a := outbox.NewRelay(dbA, js, testkit.Logger(t))
	outbox.OnPublish(a, hA.publish)
	a.Lease, a.AckWait = 5*time.Second, time.Minute
	write(dbA, "t9", "w0")
	n, err := outbox.Round(a, ctx) // in waves: A learns the stream's last sequence
	require.NoError(t, err)
	require.Equal(t, 1, n)

	// z takes a seq below a1 and a2 and commits after A has read them (its
	// INSERT run at once: AddAll's goes with the COMMIT, which narrows the
	// window between seq and commit but does not close it).
	inserted, commit := make(chan struct{}), make(chan struct{})
	late := make(chan error, 1)
	go func() {
		late <- dbB.Write(ctx, func(tx *sqldb.Tx) error {
			if err := outbox.AddNow(ctx, tx, "z", natsx.Tenant(natsx.SubjectDeliveryAccess, "p", "t5"),
				&typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: "z", Practice: "p", Resource: "t5"}}); err != nil {
				return err
			}
			close(inserted)
			<-commit
			return nil
		})
	}()
	<-inserted
	write(dbA, "t2", "a1", "a2")
	hA.mu.Lock()
	hA.armed = true
	hA.mu.Unlock()
	frozen := make(chan error, 1)
	go func() { _, err := outbox.Round(a, ctx); frozen <- err }() // chained, and frozen with both rows in its buffer
	for range 2 {
		select {
		case <-hA.queued:
		case err := <-frozen:
			t.Fatalf("A's chained round ended before sending (its lease ran out first?): %v", err)
		}
	}
	close(commit)
	require.NoError(t, <-late)
	require.Eventually(t, func() bool { return !lockHeld(t, dbB) }, 30*time.Second, 20*time.Millisecond, "A's lease runs out")

	var once sync.Once
	b := outbox.NewRelay(dbB, js, testkit.Logger(t))
	outbox.OnPublish(b, func(m *nats.Msg, nc *nats.Conn) error {
		var e typev1.AccessRecorded
		if err := proto.Unmarshal(m.Data, &e); err == nil && e.GetMeta().GetId() == "a1" {
			once.Do(hA.thaw) // A thaws between B's z and B's a1
		}
		return nc.PublishMsg(m)
	})
	_, err = b.Flush(ctx)
	require.NoError(t, err)
	<-frozen
	var order []string
	for _, e := range read(t, ctx, js, 4) {
		order = append(order, e.GetMeta().GetId())
	}
	require.Equal(t, []string{"w0", "z", "a2", "a1"}, order, "the gap: thread t2's a2 stored ahead of a1")
	require.EqualValues(t, 4, streamMsgs(t, ctx, js), "each event once")
}
