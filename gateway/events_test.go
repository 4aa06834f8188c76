package gateway

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// requireMessage checks that ev is a message.created of the named message.
func requireMessage(t *testing.T, ev sseEvent, name string) map[string]any {
	t.Helper()
	require.Equal(t, EventMessageCreated, ev.Event, ev.Data)
	m := ev.message(t)
	require.Equal(t, name, m["name"], ev.Data)
	return m
}

func TestEventsVisibilityAndLocking(t *testing.T) {
	h := newHarness(t)
	staff1 := h.openEvents(h.token("doc", auth.RoleDentist, "p1", 0), "")
	staff2 := h.openEvents(h.token("doc", auth.RoleDentist, "p2", 0), "") // same user id, another practice
	patA := h.openEvents(h.token("pa", auth.RolePatient, "p1", 10*time.Minute), "")
	patAFresh := h.openEvents(h.token("pa", auth.RolePatient, "p1", 0), "")
	patB := h.openEvents(h.token("pb", auth.RolePatient, "p1", 10*time.Minute), "")

	require.Equal(t, "text/event-stream", staff1.resp.Header.Get("Content-Type"))
	require.Equal(t, "no-store", staff1.resp.Header.Get("Cache-Control"))
	require.Equal(t, "no", staff1.resp.Header.Get("X-Accel-Buffering"))
	hello, ok := staff1.nextBlock()
	require.True(t, ok)
	require.Equal(t, "d0.c0", hello.ID, "the first block gives the client a cursor")
	require.Empty(t, hello.Data, "…without dispatching an event")

	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m1", "users/doc", "secret-1", 1, true))
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "cb", "pb", "m2", "users/doc", "hello b", 1, false))
	h.publish(natsx.SubjectMessageCreated, messageCreated("p2", "cx", "pa", "m3", "users/doc", "other practice", 1, false))
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m4", "patients/pa", "from a", 2, false))
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "cb", "pb", "m5", "users/doc", "bye b", 2, false))
	h.publish(natsx.SubjectMessageCreated, messageCreated("p2", "cx", "pa", "m6", "users/doc", "other practice 2", 2, false))

	// Staff see every thread of their practice, unlocked.
	m := requireMessage(t, staff1.next(), "conversations/ca/messages/m1")
	require.Equal(t, "secret-1", m["text"])
	require.Equal(t, false, m["locked"])
	for _, key := range []string{"senderRole", "deliverTime", "readTime", "requestId", "artifact"} {
		require.Contains(t, m, key, "same JSON as the REST API: lowerCamelCase, defaults emitted")
	}
	require.Equal(t, "SENT", m["status"])
	requireMessage(t, staff1.next(), "conversations/cb/messages/m2")
	ev := staff1.next()
	requireMessage(t, ev, "conversations/ca/messages/m4")
	require.Equal(t, "d4.c0", ev.ID)
	requireMessage(t, staff1.next(), "conversations/cb/messages/m5")

	// Another practice sees only its own, though the user id is the same.
	requireMessage(t, staff2.next(), "conversations/cx/messages/m3")
	requireMessage(t, staff2.next(), "conversations/cx/messages/m6")

	// A patient sees only their own thread; sensitive content stays locked
	// until they have signed in recently.
	m = requireMessage(t, patA.next(), "conversations/ca/messages/m1")
	require.Equal(t, true, m["locked"])
	require.Empty(t, m["text"])
	require.Empty(t, m["attachments"])
	require.Nil(t, m["artifact"])
	require.NotContains(t, patA.next().Data, "secret-1") // m4, the patient's own
	m = requireMessage(t, patAFresh.next(), "conversations/ca/messages/m1")
	require.Equal(t, false, m["locked"])
	require.Equal(t, "secret-1", m["text"])
	requireMessage(t, patB.next(), "conversations/cb/messages/m2")
	requireMessage(t, patB.next(), "conversations/cb/messages/m5")

	// Recipients' streams mark delivery, as the recipient; senders' do not.
	want := map[markCall]bool{
		{caller: "patients/pa", parent: "conversations/ca", upTo: 1}: false,
		{caller: "patients/pb", parent: "conversations/cb", upTo: 2}: false,
		{caller: "users/doc", parent: "conversations/ca", upTo: 2}:   false,
	}
	missing := len(want)
	deadline := time.After(waitFor)
	for missing > 0 {
		select {
		case mc := <-h.del.marks:
			require.NotEqual(t, "conversations/cx", mc.parent, "staff do not receive staff messages")
			if seen, ok := want[mc]; ok && !seen {
				want[mc] = true
				missing--
			}
		case <-deadline:
			t.Fatalf("delivery marks missing: %v", want)
		}
	}
}

func TestEventsConversationUpdates(t *testing.T) {
	h := newHarness(t)
	h.conv.add("conversations/ca", "p1", "patients/pa")
	h.conv.add("conversations/cb", "p1", "patients/pb")
	doc := h.openEvents(h.token("doc", auth.RoleDentist, "p1", 0), "")
	nurse := h.openEvents(h.token("nurse", auth.RoleHygienist, "p1", 0), "")
	patA := h.openEvents(h.token("pa", auth.RolePatient, "p1", 0), "")
	patB := h.openEvents(h.token("pb", auth.RolePatient, "p1", 0), "")
	other := h.openEvents(h.token("doc", auth.RoleDentist, "p2", 0), "")

	conv := func(name, patient string) *conversationv1.Conversation {
		return &conversationv1.Conversation{Name: name, Patient: patient}
	}
	h.publish(natsx.SubjectConversationCreated, &conversationv1.ConversationCreated{
		Meta: meta("p1", "users/doc"), Conversation: conv("conversations/ca", "patients/pa")})
	// Not (or no longer) visible to anyone: GetConversation answers NOT_FOUND.
	h.publish(natsx.SubjectConversationUpdated, &conversationv1.ConversationUpdated{
		Meta: meta("p1", "system"), Conversation: conv("conversations/gone", "patients/pb")})
	// The doctor's own pin.
	h.publish(natsx.SubjectConversationUser, &conversationv1.ConversationUserStateChanged{
		Meta: meta("p1", "users/doc"), Conversation: "conversations/ca", User: "users/doc", Pinned: true})
	h.publish(natsx.SubjectConversationUpdated, &conversationv1.ConversationUpdated{
		Meta: meta("p1", "system"), Conversation: conv("conversations/cb", "patients/pb")})
	// Another practice's thread.
	h.publish(natsx.SubjectConversationUpdated, &conversationv1.ConversationUpdated{
		Meta: meta("p2", "system"), Conversation: conv("conversations/ca", "patients/pa")})

	// Each caller gets their own view (the fake's unreadCount is the length
	// of the caller's id, pinned only for "doc").
	requireConv := func(c *sseClient, name string, unread float64, pinned bool) sseEvent {
		t.Helper()
		ev := c.next()
		require.Equal(t, EventConversationUpdated, ev.Event, ev.Data)
		got := ev.conversation(t)
		require.Equal(t, name, got["name"])
		require.Equal(t, unread, got["unreadCount"])
		require.Equal(t, pinned, got["pinned"])
		return ev
	}
	ev := requireConv(doc, "conversations/ca", 3, true)
	require.Equal(t, "d0.c1", ev.ID)
	requireConv(doc, "conversations/ca", 3, true) // the user-state change
	requireConv(doc, "conversations/cb", 3, true)
	requireConv(nurse, "conversations/ca", 5, false)
	requireConv(nurse, "conversations/cb", 5, false) // not the doctor's pin
	requireConv(patA, "conversations/ca", 2, false)
	requireConv(patB, "conversations/cb", 2, false) // not ca, not "gone"

	// The other practice's staff saw nothing of p1 and get their own thread
	// only if it exists for them (it does not: NOT_FOUND, skipped). A
	// message of their own arrives next.
	h.publish(natsx.SubjectMessageCreated, messageCreated("p2", "cz", "pz", "m1", "users/doc", "hi", 1, false))
	requireMessage(t, other.next(), "conversations/cz/messages/m1")
}

func TestEventsResumeAfterDisconnect(t *testing.T) {
	h := newHarness(t)
	tok := h.token("pa", auth.RolePatient, "p1", 0)

	first := h.openEvents(tok, "")
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m0", "users/doc", "before", 1, false))
	ev := first.next()
	requireMessage(t, ev, "conversations/ca/messages/m0")
	lastID := ev.ID
	first.close()

	// While the patient is away: 50 of theirs, amid others' traffic.
	for i := 1; i <= 50; i++ {
		h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", fmt.Sprintf("m%d", i), "users/doc", "missed", int64(i+1), false))
		h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "cb", "pb", fmt.Sprintf("x%d", i), "users/doc", "not yours", int64(i), false))
		h.publish(natsx.SubjectConversationUpdated, &conversationv1.ConversationUpdated{
			Meta: meta("p1", "system"), Conversation: &conversationv1.Conversation{Name: "conversations/cb", Patient: "patients/pb"}})
	}

	again := h.openEvents(tok, lastID)
	for i := 1; i <= 50; i++ {
		requireMessage(t, again.next(), fmt.Sprintf("conversations/ca/messages/m%d", i))
	}
	// Exactly once: the next event is the one published now.
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "after", "users/doc", "after", 52, false))
	requireMessage(t, again.next(), "conversations/ca/messages/after")

	// The query parameter works for EventSource polyfills.
	viaQuery := h.openEventsQuery(tok, "", "lastEventId="+lastID)
	requireMessage(t, viaQuery.next(), "conversations/ca/messages/m1")
}

func TestEventsResumeBeforeFirstEvent(t *testing.T) {
	h := newHarness(t)
	tok := h.token("pa", auth.RolePatient, "p1", 0)
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "old", "users/doc", "old", 1, false))

	c := h.openEvents(tok, "")
	hello, ok := c.nextBlock()
	require.True(t, ok)
	require.Equal(t, "d1.c0", hello.ID, "starts after what the stream already holds")
	c.close()

	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "new", "users/doc", "new", 2, false))
	requireMessage(t, h.openEvents(tok, hello.ID).next(), "conversations/ca/messages/new")
}

func TestEventsResetWhenCursorExpired(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	for i := 1; i <= 3; i++ {
		h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", fmt.Sprint(i), "users/doc", "x", int64(i), false))
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	stream, err := h.js.Stream(ctx, natsx.StreamDelivery)
	require.NoError(t, err)
	require.NoError(t, stream.Purge(ctx)) // as retention would

	for _, cursor := range []string{"d1.c0", "d99.c0"} {
		blocks := h.openEvents(tok, cursor).requireEnd()
		require.Len(t, blocks, 1, "a reset, then the end")
		require.Equal(t, EventReset, blocks[0].Event)
		require.JSONEq(t, `{"reason":"RESUME_WINDOW_EXCEEDED"}`, blocks[0].Data)
	}
	// A cursor at the head is still good.
	c := h.openEvents(tok, "d3.c0")
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "4", "users/doc", "x", 4, false))
	requireMessage(t, c.next(), "conversations/ca/messages/4")

	resp := h.connectEvents(tok, "yesterday", "")
	requireError(t, resp, http.StatusBadRequest, "INVALID_ARGUMENT")
}

func TestEventsKeepAlive(t *testing.T) {
	h := newHarness(t, func(_ *harness, c *Config, _ *Deps) { c.KeepAlive = 20 * time.Millisecond })
	c := h.openEvents(h.token("pa", auth.RolePatient, "p1", 0), "")
	for {
		b, ok := c.nextBlock()
		require.True(t, ok)
		if len(b.Comments) > 0 && b.Comments[0] == "ping" {
			break
		}
	}
	// An idle stream's cursor moves past events the caller does not see.
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "cb", "pb", "x", "users/doc", "not yours", 1, false))
	for {
		b, ok := c.nextBlock()
		require.True(t, ok)
		require.Empty(t, b.Data)
		if b.ID == "d1.c0" {
			require.Equal(t, []string{"ping"}, b.Comments)
			break
		}
	}
}

func TestEventsOutliveServerTimeouts(t *testing.T) {
	const timeout = 100 * time.Millisecond
	h := newHarness(t, func(h *harness, c *Config, _ *Deps) {
		c.KeepAlive = 10 * time.Millisecond
		h.httpServer = func(s *http.Server) { s.ReadTimeout, s.WriteTimeout = timeout, timeout }
	})
	c := h.openEvents(h.token("pa", auth.RolePatient, "p1", 0), "")
	start := time.Now()
	for time.Since(start) < 5*timeout { // keep-alives prove the stream is alive
		_, ok := c.nextBlock()
		require.True(t, ok, "the stream ended at the server's timeout")
	}
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m1", "users/doc", "x", 1, false))
	requireMessage(t, c.next(), "conversations/ca/messages/m1")
}

func TestEventsSlowClientIsReset(t *testing.T) {
	overflowed := make(chan struct{})
	h := newHarness(t, func(h *harness, c *Config, _ *Deps) {
		c.EventBuffer = 2
		h.overflowHook = func() { close(overflowed) }
	})
	gate, gated := make(chan struct{}), make(chan struct{}, 1)
	h.conv.add("conversations/ca", "p1", "patients/pa")
	h.conv.mu.Lock()
	h.conv.gate, h.conv.gated, h.conv.gateOnly = gate, gated, "doc"
	h.conv.mu.Unlock()

	slow := h.openEvents(h.token("doc", auth.RoleDentist, "p1", 0), "")
	// Another reader of the same practice, and the same events.
	fast := h.openEvents(h.token("nurse", auth.RoleHygienist, "p1", 0), "")
	// The writer is stuck on this event while more arrive.
	h.publish(natsx.SubjectConversationUpdated, &conversationv1.ConversationUpdated{
		Meta: meta("p1", "system"), Conversation: &conversationv1.Conversation{Name: "conversations/ca", Patient: "patients/pa"}})
	select {
	case <-gated:
	case <-time.After(waitFor):
		t.Fatal("the stream never asked for the conversation")
	}
	// The stuck stream slows nobody else: the other reader gets each event
	// while the first is stuck (and it reads each before the next is sent,
	// so its own small buffer never fills).
	require.Equal(t, EventConversationUpdated, fast.next().Event)
	for i := 1; i <= 5; i++ {
		h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", fmt.Sprint(i), "users/doc", "x", int64(i), false))
		requireMessage(t, fast.next(), fmt.Sprint("conversations/ca/messages/", i))
	}
	select {
	case <-overflowed:
	case <-time.After(waitFor):
		t.Fatal("the buffer never overflowed")
	}
	close(gate)

	blocks := slow.requireEnd()
	require.NotEmpty(t, blocks)
	last := blocks[len(blocks)-1]
	require.Equal(t, EventReset, last.Event)
	require.JSONEq(t, `{"reason":"TOO_FAR_BEHIND"}`, last.Data)
}

func TestEventsEndWhenTokenExpires(t *testing.T) {
	h := newHarness(t)
	issuer := h.tokens.Issuer
	issuer.TTL = 2 * time.Second
	tok, err := issuer.Issue("pa", auth.RolePatient, "p1", "Pat", 0)
	require.NoError(t, err)
	blocks := h.openEvents(tok, "").requireEnd()
	require.NotEmpty(t, blocks)
	last := blocks[len(blocks)-1]
	require.NotEmpty(t, last.Comments)
	require.True(t, strings.HasPrefix(last.Comments[0], "token expired"), last.Comments)
}

func TestEventsEndOnShutdown(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	c := h.openEvents(tok, "")
	_, ok := c.nextBlock() // connected
	require.True(t, ok)

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, h.gw.Shutdown(ctx))
	c.requireEnd()
	requireError(t, h.connectEvents(tok, "", ""), http.StatusServiceUnavailable, ReasonUnavailable)
}

func TestCursor(t *testing.T) {
	c, err := parseCursor("d12.c7")
	require.NoError(t, err)
	require.Equal(t, cursor{d: 12, c: 7}, c)
	require.Equal(t, "d12.c7", c.String())
	require.Equal(t, "id: d18446744073709551615.c0", string(cursor{d: 1<<64 - 1}.append([]byte("id: "))))
	for _, bad := range []string{"", "d12", "c7.d12", "d-1.c0", "dx.c1", "d1.c1.e1", "12.7"} {
		_, err := parseCursor(bad)
		require.Error(t, err, bad)
	}
}
