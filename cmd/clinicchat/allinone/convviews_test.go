package allinone_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// Every conversation.updated a stream receives is the thread exactly as its
// user's own list shows it (unreadCount, pinned, muted per user; no needs
// reply or assignee for a patient), whether the gateway read the thread back
// or built the view from the event and the user's state it follows: through
// new messages from either side, a patient's and a staff user's markRead,
// pin and mute by one staff user, and an assignment. Most views come from
// the events (counted on /metrics), not from a read back per user and event.
func TestConversationUpdatedIsTheUsersOwnView(t *testing.T) {
	h := harness{t: t, in: start(t, t.TempDir())}
	lee := h.as("dr-lee", "dentist")
	amy := h.as("amy", "front_desk")
	alice := h.as("alice", "patient")
	type viewer struct {
		name string
		c    *client
		s    *sse
	}
	viewers := []viewer{{"lee tab 1", lee, lee.events("")}, {"lee tab 2", lee, lee.events("")},
		{"amy", amy, amy.events("")}, {"alice", alice, alice.events("")}}
	conv := lee.startConversation("alice").Name

	// listed is the thread as c's own list shows it.
	listed := func(c *client) map[string]any {
		var out struct{ Conversations []map[string]any }
		require.Equal(t, 200, c.do("GET", "/v1/conversations?names="+url.QueryEscape(conv), nil, &out))
		require.Len(t, out.Conversations, 1)
		return out.Conversations[0]
	}
	// expect waits for each viewer's next conversation.updated of the
	// thread and compares it with the viewer's list (nothing else changes
	// the thread meanwhile), and returns the views by viewer.
	expect := func(step string) map[string]map[string]any {
		t.Helper()
		out := map[string]map[string]any{}
		for _, v := range viewers {
			ev := v.s.next(t, "conversation.updated")
			var got map[string]any
			require.NoError(t, json.Unmarshal(ev.Data["conversation"], &got))
			require.Equal(t, conv, got["name"])
			require.Equal(t, listed(v.c), got, "%s: %s's view", step, v.name)
			out[v.name] = got
		}
		return out
	}
	unread := func(view map[string]any) int {
		n, _ := view["unreadCount"].(float64)
		return int(n)
	}

	expect("thread created")
	lee.send(conv, "Your crown is ready", reqID("cv", 1))
	views := expect("first staff message")
	require.Equal(t, 1, unread(views["alice"]))
	require.Equal(t, 0, unread(views["amy"]))

	lee.send(conv, "Call us to book", reqID("cv", 2))
	views = expect("second staff message")
	require.Equal(t, 2, unread(views["alice"]))

	alice.send(conv, "Thanks, will do", reqID("cv", 3))
	views = expect("patient message")
	require.Equal(t, 1, unread(views["lee tab 1"]))
	require.Equal(t, 1, unread(views["amy"]))
	require.Equal(t, 2, unread(views["alice"]))
	require.Nil(t, views["alice"]["awaitingReplySince"], "a patient does not see needs reply")
	require.NotNil(t, views["amy"]["awaitingReplySince"])

	// alice reads everything: her next view counts from there, not from 2.
	require.Equal(t, 200, alice.do("POST", "/v1/"+conv+":markRead", map[string]any{}, nil))
	lee.send(conv, "See you Thursday", reqID("cv", 4))
	views = expect("staff message after the patient's markRead")
	require.Equal(t, 1, unread(views["alice"]))

	// lee pins and mutes: lee's tabs (only) see it, at once and later.
	for _, action := range []string{":pin", ":mute"} {
		require.Equal(t, 200, lee.do("POST", "/v1/"+conv+action, map[string]any{}, nil))
		for _, v := range viewers[:2] {
			ev := v.s.next(t, "conversation.updated")
			var got map[string]any
			require.NoError(t, json.Unmarshal(ev.Data["conversation"], &got))
			require.Equal(t, listed(lee), got, "%s after %s", v.name, action)
		}
	}
	alice.send(conv, "Thursday is fine", reqID("cv", 5))
	views = expect("patient message after lee's pin and mute")
	require.Equal(t, true, views["lee tab 2"]["pinned"])
	require.Equal(t, true, views["lee tab 1"]["muted"])
	require.Equal(t, false, views["amy"]["pinned"], "pinned is lee's own")
	require.Equal(t, 2, unread(views["lee tab 1"]))
	require.Equal(t, 2, unread(views["amy"]))

	// lee reads; amy does not.
	require.Equal(t, 200, lee.do("POST", "/v1/"+conv+":markRead", map[string]any{}, nil))
	alice.send(conv, "Or Friday", reqID("cv", 6))
	views = expect("patient message after lee's markRead")
	require.Equal(t, 1, unread(views["lee tab 1"]))
	require.Equal(t, 3, unread(views["amy"]))

	// An assignment changes no one's own fields; a patient does not see it.
	require.Equal(t, 200, amy.do("POST", "/v1/"+conv+":assign", map[string]any{"assignee": "users/dr-lee"}, nil))
	views = expect("assignment")
	require.Equal(t, "users/dr-lee", views["amy"]["assignee"])
	require.Empty(t, views["alice"]["assignee"])

	fetched, fromEvents := conversationViews(t, h)
	t.Logf("conversation views: %d read back, %d from the event", fetched, fromEvents)
	// Read back: the created thread (3 users; lee's two tabs share one)
	// and lee's pin and mute (2) = 5 of 26 views (3 users × 8 events + pin
	// and mute). Each tab follows the state it read back itself, so lee's
	// other tab reads back once more, at its next event after the creation
	// and the mute (2). A markRead to the newest message is followed, not
	// read back (it was, before: 3 more). The others are built from the
	// events, rendered once per distinct view (so counted at most once per
	// user).
	require.LessOrEqual(t, fetched, 7)
	require.GreaterOrEqual(t, fromEvents, 6, "views built from the events")
	require.LessOrEqual(t, fetched+fromEvents, 26)
}

var convViewsMetric = regexp.MustCompile(`(?m)^clinicchat_gateway_conversation_views_total\{source="(\w+)"\} (\d+)`)

// conversationViews reads the gateway's counts of conversation views read
// back and built from the event.
func conversationViews(t *testing.T, h harness) (fetched, fromEvents int) {
	resp, err := http.Get("http://" + h.in.HTTPAddr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for _, m := range convViewsMetric.FindAllStringSubmatch(string(raw), -1) {
		n, err := strconv.Atoi(m[2])
		require.NoError(t, err)
		switch m[1] {
		case "fetch":
			fetched = n
		case "event":
			fromEvents = n
		}
	}
	return fetched, fromEvents
}
