package gateway

import (
	"context"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
)

// deliveryMarks records DELIVERED receipts for what a stream wrote to its
// recipient. "Delivered up to seq" is coalesced per conversation, so a burst
// of messages costs one call per thread, and marked off the stream's
// goroutine: a goroutine runs only while marks are pending (an idle stream
// holds none), and the stream never waits for it.
//
// Marks are also spaced: after a round of calls the next waits until
// markInterval has passed, so a busy thread costs at most one receipt write
// (and its event, fan-out and audit record) per interval however fast its
// messages come, while the first message after a quiet spell is marked at
// once. The end of the stream cuts the wait short.
type deliveryMarks struct {
	mark     func(conv string, seq int64)
	interval time.Duration

	mu      sync.Mutex
	pending map[string]int64
	done    map[string]int64
	running bool
	last    time.Time     // when the last round of calls started
	closing chan struct{} // closed by wait: mark what is pending now
	wg      sync.WaitGroup
}

// markInterval is the least time between two rounds of delivery marks of a
// stream: a sender's "delivered" can show up to this much later when their
// messages come faster than that.
const markInterval = 50 * time.Millisecond

func newDeliveryMarks(mark func(conv string, seq int64)) *deliveryMarks {
	return &deliveryMarks{mark: mark, interval: markInterval, closing: make(chan struct{})}
}

// add asks for conv to be marked delivered up to seq; it never blocks.
func (d *deliveryMarks) add(conv string, seq int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if seq <= d.pending[conv] || seq <= d.done[conv] {
		return
	}
	if d.pending == nil {
		d.pending, d.done = map[string]int64{}, map[string]int64{}
	}
	d.pending[conv] = seq
	if !d.running {
		d.running = true
		d.wg.Add(1)
		go d.run()
	}
}

// run marks pending entries until none are left, a round at most every
// interval.
func (d *deliveryMarks) run() {
	defer d.wg.Done()
	for {
		d.mu.Lock()
		wait := d.interval - time.Since(d.last)
		d.mu.Unlock()
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-d.closing:
				t.Stop()
			}
		}
		d.mu.Lock()
		batch := d.pending
		if len(batch) == 0 {
			d.running = false
			d.mu.Unlock()
			return
		}
		d.pending = map[string]int64{}
		for conv, seq := range batch {
			d.done[conv] = seq
		}
		d.last = time.Now()
		d.mu.Unlock()
		for conv, seq := range batch {
			d.mark(conv, seq)
		}
	}
}

// wait marks what is pending without waiting for the interval and returns
// once no mark is running or pending. The stream calls it once, at its end.
func (d *deliveryMarks) wait() {
	close(d.closing)
	d.wg.Wait()
}

// markDelivered records that the caller received messages up to seq. It
// outlives a disconnect by at most upstreamTimeout. md is the caller's
// token as outgoing metadata (streamToken).
func (s *Server) markDelivered(id auth.Identity, md metadata.MD, conv string, seq int64) {
	ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), md), upstreamTimeout)
	defer cancel()
	_, err := s.delivery.MarkMessagesDelivered(ctx, &deliveryv1.MarkMessagesDeliveredRequest{Parent: conv, UpToSeq: seq})
	if err != nil {
		s.log.Warn("mark delivered", zap.String(logkeys.Conversation, conv), zap.Int64("up_to_seq", seq),
			zap.String(logkeys.Actor, id.Principal()), zap.Stringer(logkeys.Code, status.Code(err)))
	}
}

// streamToken is the outgoing metadata of a stream's upstream calls, made
// as its caller: built once per stream (the token is a few hundred bytes)
// and shared by its calls, which only read it (grpc copies outgoing
// metadata before changing any).
func streamToken(id auth.Identity) metadata.MD {
	return metadata.Pairs(auth.MetadataKey, "Bearer "+id.Token)
}

// isRecipient reports whether the caller is on the receiving side of m: a
// patient receiving from the practice, or staff receiving from the patient.
func isRecipient(id auth.Identity, m *deliveryv1.Message) bool {
	switch {
	case id.IsPatient():
		return !id.IsPrincipal(m.GetSender())
	case id.IsStaff():
		return strings.HasPrefix(m.GetSender(), "patients/")
	}
	return false
}

// parentOf is "conversations/c" of "conversations/c/messages/m".
func parentOf(message string) string {
	i := strings.Index(message, "/messages/")
	if i <= 0 {
		return ""
	}
	return message[:i]
}
