package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// rawEvents opens /v1/events on a plain socket and reads the response head
// only (byte by byte, so nothing of the body is consumed).
func (h *harness) rawEvents(token string) (net.Conn, string) {
	h.t.Helper()
	c, err := net.Dial("tcp", h.srv.Listener.Addr().String())
	require.NoError(h.t, err)
	h.t.Cleanup(func() { _ = c.Close() })
	_, err = fmt.Fprintf(c, "GET /v1/events HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n\r\n", token)
	require.NoError(h.t, err)
	require.NoError(h.t, c.SetReadDeadline(time.Now().Add(waitFor)))
	var head []byte
	b := make([]byte, 1)
	for !strings.HasSuffix(string(head), "\r\n\r\n") {
		_, err := c.Read(b)
		require.NoError(h.t, err)
		head = append(head, b[0])
	}
	require.NoError(h.t, c.SetReadDeadline(time.Time{}))
	return c, string(head)
}

// openLimitSlots is how many event streams hold a limit slot.
func (s *Server) openLimitSlots() int {
	s.limits.mu.Lock()
	defer s.limits.mu.Unlock()
	return s.limits.count
}

// metricsText is the gateway's /metrics page.
func (h *harness) metricsText() string {
	resp := h.do(http.MethodGet, "/metrics", "", nil)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(h.t, err)
	return string(b)
}

// An HTTP/1.1 stream taken over from net/http carries every header the
// net/http path sends (the middleware's included), with "Connection: close"
// instead of chunked encoding, and is counted in the metrics as a 200.
func TestEventsTakenOverHeadersMatchNetHTTP(t *testing.T) {
	heads := map[bool]http.Header{}
	for _, noHijack := range []bool{false, true} {
		h := newHarness(t, func(h *harness, _ *Config, _ *Deps) { h.noHijack = noHijack })
		h.conv.add("conversations/ca", "p1", "patients/pa")
		resp := h.connectEvents(h.token("doc", auth.RoleDentist, "p1", 0), "", "")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "HTTP/1.1", resp.Proto)
		c := h.readEvents(resp)
		hello, ok := c.nextBlock()
		require.True(t, ok)
		require.Equal(t, "d0.c0", hello.ID)
		h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m1", "patients/pa", "x", 1, false))
		requireMessage(t, c.next(), "conversations/ca/messages/m1")
		select { // the staff member received the patient's message
		case mark := <-h.del.marks:
			require.EqualValues(t, 1, mark.upTo)
		case <-time.After(waitFor):
			t.Fatal("the delivery was never marked")
		}

		hd := resp.Header.Clone()
		require.NotEmpty(t, hd.Get("Date"))
		if noHijack {
			require.Equal(t, []string{"chunked"}, resp.TransferEncoding)
			require.False(t, resp.Close)
		} else {
			require.Empty(t, resp.TransferEncoding)
			require.True(t, resp.Close, "the body ends with the connection")
		}
		hd.Del("Date")
		hd.Del("Connection")
		heads[noHijack] = hd

		raw := h.metricsText()
		if !noHijack { // counted when taken over (net/http's: when the stream ends)
			require.Contains(t, raw, `clinicchat_gateway_http_requests_total{code="200",method="GET",route="/v1/events"} 1`)
		}
		require.Contains(t, raw, "clinicchat_gateway_sse_clients 1\n")
		require.Contains(t, raw, `clinicchat_gateway_sse_events_total{event="message.created"} 1`)
	}
	require.Equal(t, heads[true], heads[false])
	require.Equal(t, "text/event-stream", heads[false].Get("Content-Type"))
	require.Equal(t, "nosniff", heads[false].Get("X-Content-Type-Options"))
}

// A client that disconnects frees its stream's limit slot at once, not at
// the next keep-alive.
func TestEventsDisconnectFreesSlot(t *testing.T) {
	h := newHarness(t, func(_ *harness, c *Config, _ *Deps) {
		c.MaxStreamsPerIdentity = 1
		c.KeepAlive = time.Hour // no write would notice the disconnect
	})
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	conn, head := h.rawEvents(tok)
	require.True(t, strings.HasPrefix(head, "HTTP/1.1 200 OK\r\n"), head)
	require.Contains(t, head, "\r\nConnection: close\r\n")
	requireError(t, h.connectEvents(tok, "", ""), http.StatusTooManyRequests, "RESOURCE_EXHAUSTED")
	require.Equal(t, 1, h.gw.openLimitSlots())

	require.NoError(t, conn.Close())
	require.Eventually(t, func() bool { return h.gw.openLimitSlots() == 0 }, waitFor, 5*time.Millisecond)
	require.Contains(t, h.metricsText(), "clinicchat_gateway_sse_clients 0\n")
	h.openEvents(tok, "")
}

// Shutdown closes the taken-over connections of streams still writing when
// its deadline passes (http.Server.Shutdown does not know them): a client
// that never reads does not hold the gateway for the write timeout.
func TestShutdownClosesTakenOverStreams(t *testing.T) {
	h := newHarness(t)
	conn, _ := h.rawEvents(h.token("doc", auth.RoleDentist, "p1", 0)) // never reads
	big := strings.Repeat("x", 512<<10)
	for i := 1; i <= 48; i++ { // 24 MiB: more than the socket buffers hold
		h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", fmt.Sprint(i), "users/doc", big, int64(i), false))
	}
	// The writer is stuck: events wait in its queue.
	require.Eventually(t, func() bool { return h.gw.hub.queued.Load() >= 8 }, waitFor, 5*time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, h.gw.Shutdown(ctx), context.DeadlineExceeded)
	// The connection was closed: the stream ends well within its write
	// timeout, and its client reads to the end.
	ctx, cancel = context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, h.gw.Shutdown(ctx))
	require.Equal(t, 0, h.gw.openLimitSlots())
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(waitFor)))
	_, err := io.Copy(io.Discard, conn)
	require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the connection stays open")
}

// Over TLS, HTTP/1.1 streams are taken over too; HTTP/2 ones stay on
// net/http. Both carry events and free their slot on disconnect.
func TestEventsOverTLS(t *testing.T) {
	for _, http2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("http2=%v", http2), func(t *testing.T) {
			h := newHarness(t, func(h *harness, c *Config, _ *Deps) {
				h.tls, h.http2 = true, http2
				c.KeepAlive = 10 * time.Millisecond
			})
			c := h.openEvents(h.token("pa", auth.RolePatient, "p1", 0), "")
			// Each keep-alive wakes the stream out of its read of the TLS
			// connection; the connection keeps working after.
			for pings := 0; pings < 3; {
				b, ok := c.nextBlock()
				require.True(t, ok)
				if len(b.Comments) > 0 && b.Comments[0] == "ping" {
					pings++
				}
			}
			if http2 {
				require.Equal(t, 2, c.resp.ProtoMajor)
			} else {
				require.Equal(t, 1, c.resp.ProtoMajor)
				require.True(t, c.resp.Close, "taken over: Connection: close")
			}
			require.Equal(t, "text/event-stream", c.resp.Header.Get("Content-Type"))
			h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m1", "users/doc", "x", 1, false))
			requireMessage(t, c.next(), "conversations/ca/messages/m1")
			c.close()
			require.Eventually(t, func() bool { return h.gw.openLimitSlots() == 0 }, waitFor, 5*time.Millisecond)
		})
	}
}

// metricValue reads one unlabelled sample from /metrics ("name value").
func (h *harness) metricValue(name string) string {
	h.t.Helper()
	for _, line := range strings.Split(h.metricsText(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	h.t.Fatalf("no sample %s", name)
	return ""
}

// sseWrites is the gateway's count of SSE writes so far.
func (h *harness) sseWrites() int {
	h.t.Helper()
	n, err := strconv.Atoi(h.metricValue("clinicchat_gateway_sse_writes_total"))
	require.NoError(h.t, err)
	return n
}

// Events that queue up while a stream's writer is busy are written
// together: one write for the batch, not one per event.
func TestEventsBatchQueuedEventsInOneWrite(t *testing.T) {
	for _, noHijack := range []bool{false, true} {
		t.Run(fmt.Sprintf("netHTTP=%v", noHijack), func(t *testing.T) {
			h := newHarness(t, func(h *harness, c *Config, _ *Deps) {
				h.noHijack = noHijack
				c.KeepAlive = time.Hour
			})
			gate, gated := make(chan struct{}), make(chan struct{}, 1)
			h.conv.add("conversations/ca", "p1", "patients/pa")
			h.conv.mu.Lock()
			h.conv.gate, h.conv.gated = gate, gated
			h.conv.mu.Unlock()
			c := h.openEvents(h.token("doc", auth.RoleDentist, "p1", 0), "")
			_, ok := c.nextBlock() // connected: the first write
			require.True(t, ok)
			require.Equal(t, "1", h.metricValue("clinicchat_gateway_sse_writes_total"))

			// The writer waits for the thread's view while messages queue.
			h.publish(natsx.SubjectConversationUpdated, &conversationv1.ConversationUpdated{
				Meta: meta("p1", "system"), Conversation: &conversationv1.Conversation{Name: "conversations/ca", Patient: "patients/pa"}})
			select {
			case <-gated:
			case <-time.After(waitFor):
				t.Fatal("the stream never asked for the conversation")
			}
			for i := 1; i <= 5; i++ {
				h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", fmt.Sprint(i), "patients/pa", "x", int64(i), false))
			}
			require.Eventually(t, func() bool { return h.gw.hub.queued.Load() == 5 }, waitFor, 5*time.Millisecond)
			close(gate)

			require.Equal(t, EventConversationUpdated, c.next().Event)
			for i := 1; i <= 5; i++ {
				requireMessage(t, c.next(), fmt.Sprint("conversations/ca/messages/", i))
			}
			require.Equal(t, "2", h.metricValue("clinicchat_gateway_sse_writes_total"), "6 events in one write")
		})
	}
}

// A conversation.updated built from the event (no read back) stays in the
// write batch: the events that queue while the stream waits for another
// thread's read back go out in one write with it, in order.
func TestEventsConversationViewFromTheEventStaysInTheBatch(t *testing.T) {
	h := newHarness(t, func(_ *harness, c *Config, _ *Deps) { c.KeepAlive = time.Hour })
	h.conv.add("conversations/ca", "p1", "patients/pa")
	h.conv.add("conversations/cb", "p1", "patients/pb")
	activity := func(conv, patient string, seq int64) *conversationv1.ConversationUpdated {
		m := meta("p1", "system")
		m.Action = actionActivity
		return &conversationv1.ConversationUpdated{Meta: m, MessageSeq: seq,
			Conversation: &conversationv1.Conversation{Name: "conversations/" + conv, Patient: "patients/" + patient, LastMessageSeq: int32(seq)}}
	}
	c := h.openEvents(h.token("doc", auth.RoleDentist, "p1", 0), "")
	_, ok := c.nextBlock() // connected
	require.True(t, ok)
	h.publish(natsx.SubjectConversationUpdated, activity("ca", "pa", 1)) // read back: ca's state is known from here
	require.Equal(t, EventConversationUpdated, c.next().Event)
	require.Equal(t, "2", h.metricValue("clinicchat_gateway_sse_writes_total"))

	gate, gated := make(chan struct{}), make(chan struct{}, 1)
	h.conv.mu.Lock()
	h.conv.gate, h.conv.gated = gate, gated
	h.conv.mu.Unlock()
	h.publish(natsx.SubjectConversationUpdated, activity("cb", "pb", 1)) // cb's read back waits
	select {
	case <-gated:
	case <-time.After(waitFor):
		t.Fatal("the stream never asked for the conversation")
	}
	queue := func(n int64, base string, m proto.Message) {
		h.publish(base, m)
		require.Eventually(t, func() bool { return h.gw.hub.queued.Load() == n }, waitFor, time.Millisecond)
	}
	queue(1, natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m2", "users/doc", "x", 2, false))
	queue(2, natsx.SubjectConversationUpdated, activity("ca", "pa", 2))
	queue(3, natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m3", "users/doc", "x", 3, false))
	close(gate)

	ev := c.next()
	require.Equal(t, EventConversationUpdated, ev.Event)
	require.Contains(t, ev.Data, "conversations/cb")
	requireMessage(t, c.next(), "conversations/ca/messages/m2")
	ev = c.next()
	require.Equal(t, EventConversationUpdated, ev.Event)
	require.Contains(t, ev.Data, "conversations/ca")
	requireMessage(t, c.next(), "conversations/ca/messages/m3")
	require.Equal(t, uint64(1), h.gw.hub.stats("p1").composed, "ca's view built from the event")
	require.Equal(t, "3", h.metricValue("clinicchat_gateway_sse_writes_total"), "cb's view and the three after it in one write")
}
