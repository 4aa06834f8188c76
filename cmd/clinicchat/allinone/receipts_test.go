package allinone_test

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// waitStatus waits on s for message.updated of name reaching status.
func waitStatus(t *testing.T, s *sse, name, status string) message {
	t.Helper()
	for {
		ev := s.next(t, "message.updated")
		m := eventMessage(t, ev)
		if m.Name == name && m.Status == status {
			return m
		}
	}
}

// Staff → patient and patient → staff: each message turns DELIVERED when it
// reaches a recipient's live stream and READ when a recipient opens the
// thread, and the sender's side sees it live.
func TestReceiptsBothWays(t *testing.T) {
	h := harness{t: t, in: start(t, t.TempDir())}
	staff := h.as("dr-lee", "dentist")
	colleague := h.as("hana", "hygienist")
	alice := h.as("alice", "patient")
	conv := staff.startConversation("alice")

	staffEvents := staff.events("")
	colleagueEvents := colleague.events("")
	aliceEvents := alice.events("")

	sent := staff.send(conv.Name, "Please confirm Tuesday 10:00", reqID("r", 1))
	require.Equal(t, sent.Name, eventMessage(t, aliceEvents.next(t, "message.created")).Name)
	waitStatus(t, staffEvents, sent.Name, "DELIVERED")

	var c conversation
	require.Equal(t, 200, alice.do("POST", "/v1/"+conv.Name+":markRead", map[string]any{"upTo": sent.Name}, &c))
	require.Zero(t, c.UnreadCount)
	read := waitStatus(t, staffEvents, sent.Name, "READ")
	require.NotEmpty(t, read.ReadTime)
	waitStatus(t, colleagueEvents, sent.Name, "READ")

	// Marking read again changes nothing and is not an error.
	require.Equal(t, 200, alice.do("POST", "/v1/"+conv.Name+":markRead", map[string]any{}, &c))

	// The reverse direction: any staff member reading counts.
	reply := alice.send(conv.Name, "Confirmed, thank you", reqID("a", 1))
	require.Equal(t, "patients/alice", reply.Sender)
	require.Equal(t, reply.Name, eventMessage(t, staffEvents.next(t, "message.created")).Name)
	waitStatus(t, aliceEvents, reply.Name, "DELIVERED")
	require.Equal(t, 200, colleague.do("POST", "/v1/"+conv.Name+":markRead", map[string]any{"upTo": reply.Name}, &c))
	waitStatus(t, aliceEvents, reply.Name, "READ")

	var got message
	require.Equal(t, 200, staff.do("GET", "/v1/"+reply.Name, nil, &got))
	require.Equal(t, "READ", got.Status)
	require.Equal(t, 200, staff.do("GET", "/v1/"+sent.Name, nil, &got))
	require.Equal(t, "READ", got.Status, "a status never goes backwards")
}

// A patient's stream reconnecting with Last-Event-ID gets every message
// sent while it was away, once each.
func TestReconnectResumesWithNothingMissed(t *testing.T) {
	h := harness{t: t, in: start(t, t.TempDir())}
	staff := h.as("sam", "assistant")
	alice := h.as("alice", "patient")
	conv := staff.startConversation("alice")

	first := alice.events("")
	m0 := staff.send(conv.Name, "before the disconnect", reqID("b", 0))
	ev := first.next(t, "message.created")
	require.Equal(t, m0.Name, eventMessage(t, ev).Name)
	cursor := ev.ID
	first.cancel()

	want := map[string]bool{}
	for i := range 50 {
		want[staff.send(conv.Name, "while away", reqID("w", i)).Name] = true
	}
	resumed := alice.events(cursor)
	got := map[string]int{}
	for len(got) < 50 {
		m := eventMessage(t, resumed.next(t, "message.created"))
		require.True(t, want[m.Name], "unexpected %s", m.Name)
		got[m.Name]++
	}
	marker := staff.send(conv.Name, "after the reconnect", reqID("a", 0))
	require.Equal(t, marker.Name, eventMessage(t, resumed.next(t, "message.created")).Name, "nothing twice")
	for name, n := range got {
		require.Equal(t, 1, n, name)
	}
}
