package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natstest "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// waitHub waits until the hub has handled the delivery stream up to seq.
func (h *harness) waitHub(seq uint64) {
	h.t.Helper()
	require.Eventually(h.t, func() bool { return h.gw.hub.position().d >= seq }, waitFor, time.Millisecond)
}

// consumers is the number of consumers on stream.
func (h *harness) consumers(stream string) int {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	str, err := h.js.Stream(ctx, stream)
	require.NoError(h.t, err)
	info, err := str.Info(ctx)
	require.NoError(h.t, err)
	return info.State.Consumers
}

func TestHubDecodesAndDispatchesPerPractice(t *testing.T) {
	h := newHarness(t)
	// Practice p2: three staff streams and a patient's. Practice p1: one
	// patient's stream only. Practice p3: nobody here.
	p2 := []*sseClient{
		h.openEvents(h.token("doc", auth.RoleDentist, "p2", 0), ""),
		h.openEvents(h.token("nurse", auth.RoleHygienist, "p2", 0), ""),
		h.openEvents(h.token("desk", auth.RoleAssistant, "p2", 0), ""),
	}
	pz := h.openEvents(h.token("pz", auth.RolePatient, "p2", 0), "")
	pa := h.openEvents(h.token("pa", auth.RolePatient, "p1", 0), "")
	// The hub creates its consumers in the background once it is ready.
	require.Eventually(t, func() bool {
		return h.consumers(natsx.StreamDelivery) == 1 && h.consumers(natsx.StreamConversation) == 1
	}, waitFor, 5*time.Millisecond, "one consumer per stream for the whole gateway")
	before := h.gw.hub.decodedTotal.Load()

	for i := range 20 {
		h.publish(natsx.SubjectMessageCreated, messageCreated("p3", "c3", "p3p", fmt.Sprint(i), "users/x", "p3 text", int64(i+1), false))
	}
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "cb", "pb", "b1", "users/doc", "pb text", 1, false))
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "a1", "users/doc", "pa text", 1, false))
	last := h.publish(natsx.SubjectMessageCreated, messageCreated("p2", "cz", "pz", "z1", "users/doc", "pz text", 1, false))
	h.waitHub(last)

	// Decoded: p1's message to pa and p2's, once each; not p3's (nobody
	// here), not p1's message to pb (no staff of p1 here, pb not here).
	require.Equal(t, uint64(2), h.gw.hub.decodedTotal.Load()-before)
	p1, p2s := h.gw.hub.stats("p1"), h.gw.hub.stats("p2")
	require.Equal(t, [2]uint64{1, 1}, [2]uint64{p1.decoded, p1.dispatched})
	require.Equal(t, [2]uint64{1, 4}, [2]uint64{p2s.decoded, p2s.dispatched}, "three staff and the thread's patient")
	require.Equal(t, hubStats{}, h.gw.hub.stats("p3"))

	for _, c := range append(p2, pz) {
		requireMessage(t, c.next(), "conversations/cz/messages/z1")
	}
	requireMessage(t, pa.next(), "conversations/ca/messages/a1")
	require.Equal(t, 1, h.consumers(natsx.StreamDelivery))
	// Rendered once per practice: four readers of p2 share one encoding.
	require.Equal(t, uint64(1), h.gw.hub.stats("p2").rendered)
	require.Equal(t, uint64(1), h.gw.hub.stats("p1").rendered)
	require.Equal(t, uint64(0), h.gw.hub.stats("p3").rendered)
}

// TestHubRendersOncePerViewerClass: an event is encoded once per viewer
// class, whatever the number of connections of the class, and each class
// keeps its rights: a sensitive message stays locked for the patient who
// has not signed in recently, on every one of their tabs, while staff and
// the stepped-up patient share the unlocked view. Practice p2's
// connections never decode or render p1's events.
func TestHubRendersOncePerViewerClass(t *testing.T) {
	h := newHarness(t)
	var staff, locked, fresh []*sseClient
	for i := range 6 {
		staff = append(staff, h.openEvents(h.token(fmt.Sprintf("staff%d", i%3), auth.RoleDentist, "p1", 0), ""))
	}
	for range 3 {
		locked = append(locked, h.openEvents(h.token("pa", auth.RolePatient, "p1", 10*time.Minute), ""))
		fresh = append(fresh, h.openEvents(h.token("pa", auth.RolePatient, "p1", 0), ""))
	}
	other := []*sseClient{
		h.openEvents(h.token("staff0", auth.RoleDentist, "p2", 0), ""), // same user id, another practice
		h.openEvents(h.token("pa", auth.RolePatient, "p2", 0), ""),
	}

	const n = 5
	var last uint64
	for i := range n {
		last = h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", fmt.Sprint("s", i), "users/staff0", "secret", int64(i+1), true))
	}
	h.waitHub(last)
	texts := map[string]int{}
	for _, c := range staff {
		for i := range n {
			m := requireMessage(t, c.next(), fmt.Sprint("conversations/ca/messages/s", i))
			require.Equal(t, false, m["locked"])
			texts[m["text"].(string)]++
		}
	}
	for _, c := range fresh {
		for i := range n {
			m := requireMessage(t, c.next(), fmt.Sprint("conversations/ca/messages/s", i))
			require.Equal(t, false, m["locked"])
			require.Equal(t, "secret", m["text"])
		}
	}
	for _, c := range locked {
		for i := range n {
			ev := c.next()
			m := requireMessage(t, ev, fmt.Sprint("conversations/ca/messages/s", i))
			require.Equal(t, true, m["locked"])
			require.NotContains(t, ev.Data, "secret")
			require.Empty(t, m["attachments"])
		}
	}
	require.Equal(t, map[string]int{"secret": 6 * n}, texts)

	p1 := h.gw.hub.stats("p1")
	require.Equal(t, uint64(n), p1.decoded)
	require.Equal(t, uint64(12*n), p1.dispatched, "six staff and six patient tabs")
	require.Equal(t, uint64(2*n), p1.rendered, "one unlocked and one locked view per event, not one per connection")
	require.Equal(t, hubStats{}, h.gw.hub.stats("p2"), "p1's events are never decoded nor rendered for p2's connections")
	for _, c := range other {
		for drained := false; !drained; {
			select {
			case ev := <-c.events:
				require.Empty(t, ev.Data, "p2 received an event of p1")
			default:
				drained = true
			}
		}
	}
}

func TestEventsPatientOnlyOwnThread(t *testing.T) {
	h := newHarness(t)
	// Ids with subject metacharacters: "p.a" must not match "p", nor "p.*".
	tok := h.token("p.a", auth.RolePatient, "demo.1", 0)
	mine := h.openEvents(tok, "")
	other := h.openEvents(h.token("p", auth.RolePatient, "demo.1", 0), "")
	star := h.openEvents(h.token("p.*", auth.RolePatient, "demo.1", 0), "")

	h.publish(natsx.SubjectMessageCreated, messageCreated("demo.1", "cp", "p", "1", "users/doc", "for p", 1, false))
	h.publish(natsx.SubjectMessageCreated, messageCreated("demo.1", "cs", "p.*", "2", "users/doc", "for p.*", 1, false))
	h.publish(natsx.SubjectMessageCreated, messageCreated("demo", "cx", "p.a", "3", "users/doc", "other practice", 1, false))
	h.publish(natsx.SubjectMessageCreated, messageCreated("demo.1", "ca", "p.a", "4", "users/doc", "for p.a", 1, false))
	requireMessage(t, mine.next(), "conversations/ca/messages/4")
	requireMessage(t, other.next(), "conversations/cp/messages/1")
	requireMessage(t, star.next(), "conversations/cs/messages/2")

	// Catch-up reads the same subjects: only the patient's own thread.
	again := h.openEvents(tok, "d0.c0")
	requireMessage(t, again.next(), "conversations/ca/messages/4")
	h.publish(natsx.SubjectMessageCreated, messageCreated("demo.1", "ca", "p.a", "5", "users/doc", "live", 2, false))
	requireMessage(t, again.next(), "conversations/ca/messages/5")
	requireMessage(t, mine.next(), "conversations/ca/messages/5")
}

// Events and pending outbox rows written before the upgrade carry the
// pre-tenant subjects; live streams and catch-up both still deliver them,
// once, to whoever may see them.
func TestEventsPreTenantSubjects(t *testing.T) {
	h := newHarness(t)
	h.conv.add("conversations/ca", "p1", "patients/pa")
	h.publishLegacy(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "old1", "users/doc", "old", 1, false))
	h.publishLegacy(natsx.SubjectMessageCreated, messageCreated("p1", "cb", "pb", "old2", "users/doc", "not pa's", 1, false))
	h.publishLegacy(natsx.SubjectMessageCreated, messageCreated("p2", "ca", "pa", "old3", "users/doc", "other practice", 1, false))
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "new1", "users/doc", "new", 2, false))
	h.publishLegacy(natsx.SubjectConversationUpdated, &conversationv1.ConversationUpdated{
		Meta: meta("p1", "system"), Conversation: &conversationv1.Conversation{Name: "conversations/ca", Patient: "patients/pa"}})

	pa := h.openEvents(h.token("pa", auth.RolePatient, "p1", 0), "d0.c0")
	requireMessage(t, pa.next(), "conversations/ca/messages/old1")
	requireMessage(t, pa.next(), "conversations/ca/messages/new1")
	ev := pa.next()
	require.Equal(t, EventConversationUpdated, ev.Event)
	require.Equal(t, "d4.c1", ev.ID)

	doc := h.openEvents(h.token("doc", auth.RoleDentist, "p1", 0), "")
	h.publishLegacy(natsx.SubjectMessageCreated, messageCreated("p2", "cx", "px", "live0", "users/doc", "other practice", 1, false))
	h.publishLegacy(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "live1", "users/doc", "live old form", 3, false))
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "live2", "users/doc", "live new form", 4, false))
	for _, c := range []*sseClient{pa, doc} {
		requireMessage(t, c.next(), "conversations/ca/messages/live1")
		requireMessage(t, c.next(), "conversations/ca/messages/live2")
	}
}

func TestEventsStreamLimits(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	var open []*sseClient
	for range DefaultMaxStreamsPerIdentity {
		open = append(open, h.openEvents(tok, ""))
	}
	resp := h.connectEvents(tok, "", "")
	require.Equal(t, "5", resp.Header.Get("Retry-After"))
	requireError(t, resp, http.StatusTooManyRequests, "RESOURCE_EXHAUSTED")
	// Another identity (the same user id in another practice) is not affected.
	h.openEvents(h.token("doc", auth.RoleDentist, "p2", 0), "")

	// Closing one frees its slot.
	open[0].close()
	require.Eventually(t, func() bool {
		resp := h.connectEvents(tok, "", "")
		if resp.StatusCode == http.StatusOK {
			h.readEvents(resp)
			return true
		}
		_ = resp.Body.Close()
		return false
	}, waitFor, 5*time.Millisecond)

	resp = h.do(http.MethodGet, "/metrics", "", nil)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	raw := string(b)
	require.Contains(t, raw, `clinicchat_gateway_sse_refused_total{reason="per_identity"}`)
	require.Contains(t, raw, `clinicchat_gateway_sse_clients 11`)
	require.Contains(t, raw, `clinicchat_gateway_hub_queue_depth`)
	require.Contains(t, raw, `clinicchat_gateway_hub_events_decoded_total`)
	require.Contains(t, raw, `clinicchat_gateway_sse_dropped_events_total`)
}

func TestEventsGatewayCeiling(t *testing.T) {
	h := newHarness(t, func(_ *harness, c *Config, _ *Deps) { c.MaxStreams = 2 })
	h.openEvents(h.token("a", auth.RoleDentist, "p1", 0), "")
	h.openEvents(h.token("b", auth.RoleDentist, "p1", 0), "")
	resp := h.connectEvents(h.token("c", auth.RoleDentist, "p1", 0), "", "")
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
	requireError(t, resp, http.StatusTooManyRequests, "RESOURCE_EXHAUSTED")
}

// A client resumes on another gateway (a restart, or a second replica):
// the cursor is the streams' sequences, which every gateway shares.
func TestEventsResumeOnAnotherGateway(t *testing.T) {
	g1 := newHarness(t)
	g2 := newHarnessOn(t, g1)
	tok := g1.token("pa", auth.RolePatient, "p1", 0)
	c := g1.openEvents(tok, "")
	g1.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m0", "users/doc", "x", 1, false))
	ev := c.next()
	requireMessage(t, ev, "conversations/ca/messages/m0")
	// g2 is running (its hub is ahead of the client) while g1 goes away.
	g2.openEvents(g2.token("doc", auth.RoleDentist, "p9", 0), "")
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, g1.gw.Shutdown(ctx))
	c.requireEnd()

	for i := 1; i <= 5; i++ {
		g1.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", fmt.Sprint("m", i), "users/doc", "x", int64(i+1), false))
		g1.publish(natsx.SubjectMessageCreated, messageCreated("p1", "cb", "pb", fmt.Sprint("x", i), "users/doc", "x", int64(i), false))
	}
	g2.waitHub(11)
	again := g2.openEvents(tok, ev.ID)
	for i := 1; i <= 5; i++ {
		requireMessage(t, again.next(), fmt.Sprint("conversations/ca/messages/m", i))
	}
	g1.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "live", "users/doc", "x", 7, false))
	requireMessage(t, again.next(), "conversations/ca/messages/live")

	// A gateway started after the events (a restart) catches up the same way.
	g3 := newHarnessOn(t, g1)
	third := g3.openEvents(tok, ev.ID)
	for i := 1; i <= 5; i++ {
		requireMessage(t, third.next(), fmt.Sprint("conversations/ca/messages/m", i))
	}
	requireMessage(t, third.next(), "conversations/ca/messages/live")
}

// Live updates answer 503 only while NATS is unreachable; open streams and
// the hub recover by themselves when it is back, losing nothing.
func TestEventsRecoverWhenNATSReturns(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	c := h.openEvents(tok, "")
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m1", "users/doc", "x", 1, false))
	requireMessage(t, c.next(), "conversations/ca/messages/m1")

	// The same server again later: its port and its store.
	opts := natstest.DefaultTestOptions
	opts.JetStream = true
	opts.Port = h.ns.Addr().(*net.TCPAddr).Port
	opts.StoreDir = filepath.Dir(h.ns.StoreDir())
	h.ns.Shutdown()
	h.ns.WaitForShutdown()
	require.Eventually(t, func() bool {
		resp := h.connectEvents(tok, "", "")
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	}, waitFor, 10*time.Millisecond)

	h.ns = natstest.RunServer(&opts)
	t.Cleanup(h.ns.Shutdown)
	m2 := messageCreated("p1", "ca", "pa", "m2", "users/doc", "x", 2, false)
	raw, err := proto.Marshal(m2)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		// With a message id, as the outbox relay publishes: a retry is no duplicate.
		_, err := h.js.Publish(ctx, tenantSubject(natsx.SubjectMessageCreated, m2), raw, jetstream.WithMsgID("m2"))
		return err == nil
	}, waitFor, 50*time.Millisecond)
	requireMessage(t, c.next(), "conversations/ca/messages/m2")
	requireMessage(t, h.openEvents(tok, "d1.c0").next(), "conversations/ca/messages/m2")
}

// TestHubSharesConversationViewsPerUser: a conversation event is fetched
// and rendered once per user (their unreadCount, pinned), shared by that
// user's tabs, never by another user's; another patient and another
// practice get nothing.
func TestHubSharesConversationViewsPerUser(t *testing.T) {
	h := newHarness(t)
	h.conv.add("conversations/ca", "p1", "patients/pa")
	tabs := map[string][]*sseClient{}
	for _, u := range []struct {
		subject, role string
		n             int
	}{{"doc", auth.RoleDentist, 3}, {"nurse", auth.RoleHygienist, 1}, {"pa", auth.RolePatient, 2}} {
		for range u.n {
			tabs[u.subject] = append(tabs[u.subject], h.openEvents(h.token(u.subject, u.role, "p1", 0), ""))
		}
	}
	pb := h.openEvents(h.token("pb", auth.RolePatient, "p1", 0), "")
	other := h.openEvents(h.token("doc", auth.RoleDentist, "p2", 0), "")

	h.publish(natsx.SubjectConversationUpdated, &conversationv1.ConversationUpdated{
		Meta: meta("p1", "system"), Conversation: &conversationv1.Conversation{Name: "conversations/ca", Patient: "patients/pa"}})
	for subject, cs := range tabs {
		for _, c := range cs {
			ev := c.next()
			require.Equal(t, EventConversationUpdated, ev.Event)
			var body struct {
				Conversation struct {
					Name        string
					UnreadCount int
					Pinned      bool
				}
			}
			require.NoError(t, json.Unmarshal([]byte(ev.Data), &body))
			require.Equal(t, "conversations/ca", body.Conversation.Name)
			require.Equal(t, len(subject), body.Conversation.UnreadCount, "%s's own view", subject)
			require.Equal(t, subject == "doc", body.Conversation.Pinned)
		}
	}
	st := h.gw.hub.stats("p1")
	require.Equal(t, uint64(6), st.dispatched)
	require.Equal(t, uint64(3), st.fetched, "once per user (doc, nurse, pa), not per tab")
	require.Equal(t, hubStats{}, h.gw.hub.stats("p2"))
	for _, c := range []*sseClient{pb, other} {
		for drained := false; !drained; {
			select {
			case ev := <-c.events:
				require.Empty(t, ev.Data, "an event reached a stream that may not see it")
			default:
				drained = true
			}
		}
	}
}

// TestHubRecreatesItsConsumerFromItsPosition: when the hub's consumer goes
// away (deleted, or its server died) the hub makes a new one from where it
// was: the next events arrive, in order, and nothing is sent twice.
func TestHubRecreatesItsConsumerFromItsPosition(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	c := h.openEvents(tok, "")
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m1", "users/doc", "x", 1, false))
	requireMessage(t, c.next(), "conversations/ca/messages/m1")

	ctx := context.Background()
	str, err := h.js.Stream(ctx, natsx.StreamDelivery)
	require.NoError(t, err)
	names := str.ConsumerNames(ctx)
	var deleted int
	for name := range names.Name() {
		require.NoError(t, str.DeleteConsumer(ctx, name))
		deleted++
	}
	require.NoError(t, names.Err())
	require.Positive(t, deleted, "the hub's consumer")

	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m2", "users/doc", "x", 2, false))
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m3", "users/doc", "x", 3, false))
	requireMessage(t, c.next(), "conversations/ca/messages/m2")
	requireMessage(t, c.next(), "conversations/ca/messages/m3")
}

// TestHubSharesConversationViewsBuiltFromEvents: once each user's own
// fields are known (read back at the first event), a new message's
// conversation.updated is built from the event, rendered once per distinct
// view and shared by every user who sees that one, not read back or
// rendered per user; each user still gets their own count.
func TestHubSharesConversationViewsBuiltFromEvents(t *testing.T) {
	h := newHarness(t)
	h.conv.add("conversations/ca", "p1", "patients/pa")
	var staff []*sseClient
	for _, u := range []string{"ann", "bob", "cat"} { // the fake's unreadCount is len(subject): 3 each
		staff = append(staff, h.openEvents(h.token(u, auth.RoleDentist, "p1", 0), ""))
	}
	pa := h.openEvents(h.token("pa", auth.RolePatient, "p1", 0), "") // unreadCount 2
	activity := func(seq int64, fromPatient bool) *conversationv1.ConversationUpdated {
		m := meta("p1", "system")
		m.Action = actionActivity
		return &conversationv1.ConversationUpdated{Meta: m, MessageSeq: seq, MessageFromPatient: fromPatient,
			Conversation: &conversationv1.Conversation{Name: "conversations/ca", Patient: "patients/pa", LastMessageSeq: int32(seq)}}
	}
	unread := func(c *sseClient) int {
		ev := c.next()
		require.Equal(t, EventConversationUpdated, ev.Event)
		var body struct{ Conversation struct{ UnreadCount int } }
		require.NoError(t, json.Unmarshal([]byte(ev.Data), &body))
		return body.Conversation.UnreadCount
	}
	for i, step := range []struct {
		fromPatient       bool
		staffWant, paWant int
	}{{false, 3, 2}, {false, 3, 3}, {true, 4, 3}} {
		h.publish(natsx.SubjectConversationUpdated, activity(int64(i+1), step.fromPatient))
		for _, c := range staff {
			require.Equal(t, step.staffWant, unread(c), "step %d", i)
		}
		require.Equal(t, step.paWant, unread(pa), "step %d", i)
	}
	st := h.gw.hub.stats("p1")
	require.Equal(t, uint64(4), st.fetched, "each user's first event only")
	require.Equal(t, uint64(4), st.composed, "one view for the three staff and one for the patient, twice")
}

// The product's echoes (receipt status, thread activity) are published on
// kinds of their own since the audit stopped reading them; events of the
// same kinds published before, on message.updated and conversation.updated,
// are still in the streams. Catch-up, a resume across the upgrade
// (Last-Event-ID) and live streams deliver both forms, once, in order.
func TestEventsEchoKindsAndTheSubjectsBeforeThem(t *testing.T) {
	h := newHarness(t)
	h.conv.add("conversations/ca", "p1", "patients/pa")
	status := func(s deliveryv1.Message_Status) *deliveryv1.MessageUpdated {
		m := messageCreated("p1", "ca", "pa", "1", "users/doc", "hi", 1, false).GetMessage()
		m.Status = s
		return &deliveryv1.MessageUpdated{Meta: &typev1.EventMeta{Id: "ev-" + s.String(), Time: timestamppb.Now(),
			Practice: "p1", Actor: natsx.SystemActor, Action: "message.status", Outcome: typev1.EventMeta_ALLOWED},
			Message: m, Patient: "patients/pa"}
	}
	activity := func() *conversationv1.ConversationUpdated {
		return &conversationv1.ConversationUpdated{Meta: &typev1.EventMeta{Id: "ev-act", Time: timestamppb.Now(),
			Practice: "p1", Actor: natsx.SystemActor, Action: "conversation.activity", Outcome: typev1.EventMeta_ALLOWED},
			Conversation: &conversationv1.Conversation{Name: "conversations/ca", Patient: "patients/pa"}}
	}
	// Before the upgrade: on the audited kinds.
	h.publish(natsx.SubjectMessageUpdated, status(deliveryv1.Message_DELIVERED))
	h.publish(natsx.SubjectConversationUpdated, activity())
	// After: on the echo kinds (where natsx.PublishBase puts them).
	require.Equal(t, natsx.SubjectMessageStatusEcho, natsx.PublishBase(natsx.SubjectMessageUpdated, natsx.SystemActor, "message.status"))
	h.publish(natsx.SubjectMessageStatusEcho, status(deliveryv1.Message_READ))
	h.publish(natsx.SubjectConversationEcho, activity())

	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	read := func(c *sseClient, n int) map[string]string {
		got := map[string]string{}
		for range n {
			ev := c.next()
			got[ev.ID] = ev.Event
			if ev.Event == EventMessageUpdated {
				got[ev.ID] += " " + ev.message(t)["status"].(string)
			}
		}
		return got
	}
	all := h.openEvents(tok, "d0.c0")
	require.Equal(t, map[string]string{
		"d1.c0": EventMessageUpdated + " DELIVERED", "d2.c0": EventMessageUpdated + " READ",
		"d2.c1": EventConversationUpdated, "d2.c2": EventConversationUpdated,
	}, read(all, 4))

	// Resumed after the last event on the old subjects: the echoes since.
	resumed := h.openEvents(tok, "d1.c1")
	require.Equal(t, map[string]string{"d2.c1": EventMessageUpdated + " READ", "d2.c2": EventConversationUpdated},
		read(resumed, 2))

	// Live: both forms still reach open streams.
	h.publish(natsx.SubjectMessageUpdated, status(deliveryv1.Message_DELIVERED))
	h.publish(natsx.SubjectMessageStatusEcho, status(deliveryv1.Message_READ))
	for _, c := range []*sseClient{all, resumed} {
		require.Equal(t, map[string]string{"d3.c2": EventMessageUpdated + " DELIVERED", "d4.c2": EventMessageUpdated + " READ"}, read(c, 2))
	}
}

// TestHubWakesAStreamOncePerBurst: events the stream already held when the
// hub's consumer took them (here: published while the consumer was gone,
// then delivered at once by its successor) wake each connection once, at
// the end of the burst, so the stream writes them together, in order, each
// with its own id; a lone event is woken as soon as it is dispatched, not
// by the time bound.
func TestHubWakesAStreamOncePerBurst(t *testing.T) {
	for _, noHijack := range []bool{false, true} {
		t.Run(fmt.Sprintf("netHTTP=%v", noHijack), func(t *testing.T) {
			h := newHarness(t, func(h *harness, c *Config, _ *Deps) {
				h.noHijack = noHijack
				c.KeepAlive = time.Hour
			})
			wakes := h.gw.hub.wakes[streamD]
			wakes.mu.Lock()
			wakes.wait = time.Hour // the end of the burst must wake, not the timer
			wakes.mu.Unlock()
			doc := h.openEvents(h.token("doc", auth.RoleDentist, "p1", 0), "")
			nurse := h.openEvents(h.token("nurse", auth.RoleDentist, "p1", 0), "")
			patient := h.openEvents(h.token("pa", auth.RolePatient, "p1", 0), "")
			h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m0", "users/doc", "x", 1, false))
			for _, c := range []*sseClient{doc, nurse, patient} {
				requireMessage(t, c.next(), "conversations/ca/messages/m0")
			}
			require.Equal(t, "6", h.metricValue("clinicchat_gateway_sse_writes_total"), "three hellos, then m0 once per stream")
			require.Zero(t, wakes.timed.Load(), "a lone event is woken at once")
			require.Equal(t, uint64(1), wakes.wakes.Load())

			ctx := context.Background()
			str, err := h.js.Stream(ctx, natsx.StreamDelivery)
			require.NoError(t, err)
			names := str.ConsumerNames(ctx)
			for name := range names.Name() {
				require.NoError(t, str.DeleteConsumer(ctx, name))
			}
			require.NoError(t, names.Err())
			const n = 6
			for i := 1; i <= n; i++ {
				h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", fmt.Sprint("m", i), "users/doc", "x", int64(i+1), false))
			}
			for _, c := range []*sseClient{doc, nurse, patient} {
				last := cursor{}
				for i := 1; i <= n; i++ {
					ev := c.next()
					requireMessage(t, ev, fmt.Sprint("conversations/ca/messages/m", i))
					cur, err := parseCursor(ev.ID)
					require.NoError(t, err)
					require.Greater(t, cur.d, last.d, "each event its own, later id")
					last = cur
				}
			}
			// The staff streams get the burst in one write each; the
			// patient, its recipient, is woken at once for each message
			// (TestHubWakesARecipientAtOnce), so gets 1 to n writes.
			writes := h.sseWrites()
			require.GreaterOrEqual(t, writes, 6+2+1)
			require.LessOrEqual(t, writes, 6+2+n, "the burst in one write per staff stream")
			require.Equal(t, fmt.Sprint(3*(n+1)), h.metricValue(`clinicchat_gateway_sse_events_total{event="message.created"}`))
			require.Equal(t, uint64(2), wakes.wakes.Load(), "one wake-up for the burst")
			require.Zero(t, wakes.timed.Load())
		})
	}
}

// TestHubWakesARecipientAtOnce: a new message wakes its recipient's stream
// as soon as it is dispatched, not at the end of its burst (issue 9's send
// → recipient stream latency); the other streams that see it wait for the
// burst's end as before.
func TestHubWakesARecipientAtOnce(t *testing.T) {
	h := newHarness(t, func(_ *harness, c *Config, _ *Deps) { c.KeepAlive = time.Hour })
	doc := h.openEvents(h.token("doc", auth.RoleDentist, "p1", 0), "")
	patient := h.openEvents(h.token("pa", auth.RolePatient, "p1", 0), "")
	// The hub's consumers stop: this test dispatches the event itself, as
	// their callback does, but without the end of the burst.
	h.gw.hub.stop()
	wakes := h.gw.hub.wakes[streamD]
	wakes.mu.Lock()
	wakes.wait = time.Hour // only the end of the burst would wake the others
	wakes.mu.Unlock()
	seq := h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m1", "users/doc", "x", 1, false))
	ctx := context.Background()
	cons, err := h.js.OrderedConsumer(ctx, natsx.StreamDelivery, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: seq})
	require.NoError(t, err)
	m, err := cons.Next(jetstream.FetchMaxWait(waitFor))
	require.NoError(t, err)
	h.gw.hub.dispatch(streamD, m, seq, time.Now())

	requireMessage(t, patient.next(), "conversations/ca/messages/m1")
	wakes.mu.Lock()
	held := len(wakes.conns)
	wakes.mu.Unlock()
	require.Equal(t, 1, held, "the staff stream, not the message's recipient, waits for the end of the burst")
	require.True(t, wakes.flush())
	requireMessage(t, doc.next(), "conversations/ca/messages/m1")
}

// TestWakeBatchTimeBound: a burst whose end never comes is woken after the
// wait, each connection once.
func TestWakeBatchTimeBound(t *testing.T) {
	b := newWakeBatch(streamD, time.Millisecond)
	// Each with an event queued: a batch wakes no stream that has written
	// everything it held (TestWakeBatchSkipsDrainedStreams).
	c1 := &conn{wake: make(chan struct{}, 1), items: []*event{{}}}
	c2 := &conn{wake: make(chan struct{}, 1), items: []*event{{}}}
	b.add(c1)
	b.add(c2)
	b.add(c1)
	for _, c := range []*conn{c1, c2} {
		select {
		case <-c.wake:
		case <-time.After(waitFor):
			t.Fatal("never woken")
		}
	}
	require.Eventually(t, func() bool { return b.timed.Load() == 1 }, waitFor, time.Millisecond)
	require.False(t, b.flush(), "nothing left")
	for _, c := range []*conn{c1, c2} {
		require.Empty(t, c.wake, "woken once")
	}

	// wakeMax events wake at once, without the timer.
	b = newWakeBatch(streamD, time.Hour)
	for range wakeMax {
		b.add(c1)
	}
	require.Len(t, c1.wake, 1)
	require.Equal(t, uint64(1), b.wakes.Load())
	require.Zero(t, b.timed.Load())
}

// The hub's delivery consumer filters on one wildcard; it must take exactly
// hubBases' kinds of that stream, in the tenant and the pre-tenant form.
func TestHubFilterIsHubBases(t *testing.T) {
	for stream := range streamNames() {
		want := map[string]bool{}
		for _, b := range hubBases(stream) {
			want[natsx.Kind(b)] = true
		}
		filter := hubFilter(stream)
		for _, kind := range natsx.Kinds() {
			base := natsx.Prefix() + "." + kind
			if natsx.StreamOf(base) != streamNames()[stream] {
				continue
			}
			for _, subject := range []string{base, natsx.Tenant(base, "demo", "c1")} {
				matched := false
				for _, f := range filter {
					matched = matched || subjectMatches(f, subject)
				}
				require.Equal(t, want[kind], matched, "stream %d, %s against %v", stream, subject, filter)
			}
		}
	}
	require.Len(t, hubFilter(streamD), 1, "the delivery stream's consumer has one filter subject")
}

// subjectMatches applies NATS's wildcards: * is one token, a final > one or more.
func subjectMatches(filter, subject string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, tok := range f {
		switch {
		case tok == ">":
			return i == len(f)-1 && len(s) > i
		case i >= len(s):
			return false
		case tok != "*" && tok != s[i]:
			return false
		}
	}
	return len(f) == len(s)
}

// TestHubHoldsLazyEvents: what a viewer is not waiting for (a thread's
// conversation.updated; a receipt echoed to the side that received the
// message) is held until its stream is woken for something else, a new
// message above all, and goes out in the same write, in queue order; the
// same receipt reaches the message's sender at the end of its burst.
func TestHubHoldsLazyEvents(t *testing.T) {
	for _, noHijack := range []bool{false, true} {
		t.Run(fmt.Sprintf("netHTTP=%v", noHijack), func(t *testing.T) {
			h := newHarness(t, func(h *harness, c *Config, _ *Deps) {
				h.noHijack = noHijack
				c.KeepAlive = time.Hour
			})
			h.conv.add("conversations/ca", "p1", "patients/pa")
			hub := h.gw.hub
			held := func(b *wakeBatch) int {
				b.mu.Lock()
				defer b.mu.Unlock()
				return len(b.conns)
			}
			writes := h.sseWrites
			doc := h.openEvents(h.token("doc", auth.RoleDentist, "p1", 0), "")
			pa := h.openEvents(h.token("pa", auth.RolePatient, "p1", 0), "")
			nurse := h.openEvents(h.token("nurse", auth.RoleHygienist, "p1", 0), "")
			activity := func(seq int64) uint64 {
				act := meta("p1", natsx.SystemActor)
				act.Action = actionActivity
				return h.publish(natsx.SubjectConversationEcho, &conversationv1.ConversationUpdated{Meta: act, MessageSeq: seq,
					Conversation: &conversationv1.Conversation{Name: "conversations/ca", Patient: "patients/pa", LastMessageSeq: int32(seq)}})
			}
			// Each stream's first view of the thread is fetched (and what it
			// buffered written before the fetch); later ones are built from
			// the event. The lazy wait's timer writes this one.
			activity(1)
			for _, c := range []*sseClient{doc, pa, nurse} {
				require.Equal(t, EventConversationUpdated, c.next().Event)
			}
			for _, b := range hub.lazy {
				b.mu.Lock()
				b.wait = time.Hour // from here held until something else wakes the stream
				b.mu.Unlock()
			}
			base := writes()

			// A receipt of doc's message: prompt for doc, held for pa and for
			// the other staff member.
			m := messageCreated("p1", "ca", "pa", "m1", "users/doc", "x", 1, false).GetMessage()
			m.Status = deliveryv1.Message_READ
			h.publish(natsx.SubjectMessageStatusEcho, &deliveryv1.MessageUpdated{Meta: meta("p1", natsx.SystemActor),
				Message: m, Patient: "patients/pa"})
			require.Equal(t, EventMessageUpdated, doc.next().Event)
			require.Eventually(t, func() bool { return held(hub.lazy[streamD]) == 2 }, waitFor, time.Millisecond,
				"the patient's echo of its own receipt, the other staff member's copy")
			// The thread's activity: held for all three.
			seq := activity(2)
			require.Eventually(t, func() bool { return hub.position().c >= seq }, waitFor, time.Millisecond)
			require.Equal(t, 3, held(hub.lazy[streamC]))
			require.Equal(t, base+1, writes(), "nothing written for what is held")

			// A new message for pa wakes it: everything held goes out first,
			// in the same write.
			h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m2", "users/doc", "y", 2, false))
			require.Equal(t, EventMessageUpdated, pa.next().Event)
			require.Equal(t, EventConversationUpdated, pa.next().Event)
			requireMessage(t, pa.next(), "conversations/ca/messages/m2")
			// doc's held activity and the new message: the burst's end wakes it.
			require.Equal(t, EventConversationUpdated, doc.next().Event)
			requireMessage(t, doc.next(), "conversations/ca/messages/m2")
			// nurse's held receipt and activity, and the new message: one
			// write, in queue order.
			require.Equal(t, EventMessageUpdated, nurse.next().Event)
			require.Equal(t, EventConversationUpdated, nurse.next().Event)
			requireMessage(t, nurse.next(), "conversations/ca/messages/m2")
			require.Equal(t, base+4, writes(), "one write for pa's three events, one for doc's two, one for nurse's three")
		})
	}
}

// TestWakeBatchSkipsDrainedStreams: a stream that wrote what it held
// (woken for something else meanwhile) is not woken again for nothing.
func TestWakeBatchSkipsDrainedStreams(t *testing.T) {
	b := newWakeBatch(streamD, time.Hour)
	drained := &conn{wake: make(chan struct{}, 1)}
	waiting := &conn{wake: make(chan struct{}, 1), items: []*event{{}}}
	b.add(drained)
	b.add(waiting)
	require.True(t, b.flush())
	require.Empty(t, drained.wake)
	require.Len(t, waiting.wake, 1)
}

// TestHubSkipsUserAddressedEventsOfAbsentUsers: a conversation.read or a
// pin is seen only by its user (visibleTo), so with only staff streams of
// the practice here a patient's receipt (each read on a phone, while the
// practice's staff have the Chat page open) and another staff member's pin
// are skipped before decoding; the user's own are decoded and applied.
// Pre-tenant reads (the practice alone in the subject) are still decoded.
func TestHubSkipsUserAddressedEventsOfAbsentUsers(t *testing.T) {
	h := newHarness(t)
	h.conv.add("conversations/ca", "p1", "patients/pa")
	doc := h.openEvents(h.token("doc", auth.RoleDentist, "p1", 0), "")
	require.Eventually(t, func() bool {
		return h.consumers(natsx.StreamDelivery) == 1 && h.consumers(natsx.StreamConversation) == 1
	}, waitFor, 5*time.Millisecond)
	before := h.gw.hub.decodedTotal.Load()
	waitC := func(seq uint64) {
		t.Helper()
		require.Eventually(t, func() bool { return h.gw.hub.position().c >= seq }, waitFor, time.Millisecond)
	}

	h.publish(natsx.SubjectConversationRead, &conversationv1.ConversationRead{Meta: meta("p1", "patients/pa"),
		Conversation: "conversations/ca", Reader: "patients/pa", ReaderRole: auth.RolePatient, UpToSeq: 3})
	h.publish(natsx.SubjectConversationUser, &conversationv1.ConversationUserStateChanged{Meta: meta("p1", "users/nurse"),
		Conversation: "conversations/ca", User: "users/nurse", Pinned: true})
	waitC(h.publish(natsx.SubjectConversationRead, &conversationv1.ConversationRead{Meta: meta("p1", "users/nurse"),
		Conversation: "conversations/ca", Reader: "users/nurse", ReaderRole: auth.RoleHygienist, UpToSeq: 3}))
	require.Equal(t, uint64(0), h.gw.hub.decodedTotal.Load()-before, "user-addressed events of users with no stream here were decoded")
	require.Equal(t, hubStats{}, h.gw.hub.stats("p1"))

	// The doctor's own read, and a pre-tenant read (practice token only).
	h.publish(natsx.SubjectConversationRead, &conversationv1.ConversationRead{Meta: meta("p1", "users/doc"),
		Conversation: "conversations/ca", Reader: "users/doc", ReaderRole: auth.RoleDentist, UpToSeq: 3})
	waitC(h.publishLegacy(natsx.Tenant(natsx.SubjectConversationRead, "p1"), &conversationv1.ConversationRead{
		Meta: meta("p1", "patients/pa"), Conversation: "conversations/ca", Reader: "patients/pa", UpToSeq: 4}))
	require.Equal(t, uint64(2), h.gw.hub.decodedTotal.Load()-before)
	require.Equal(t, [2]uint64{2, 1}, [2]uint64{h.gw.hub.stats("p1").decoded, h.gw.hub.stats("p1").dispatched},
		"both decoded, the doctor's own read queued on the doctor's stream")

	// The doctor's stream still gets what staff see.
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m1", "patients/pa", "hi", 1, false))
	requireMessage(t, doc.next(), "conversations/ca/messages/m1")
}
