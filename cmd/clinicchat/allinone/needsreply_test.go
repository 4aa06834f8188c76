package allinone_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type triagedConversation struct {
	Name                string `json:"name"`
	AwaitingReplySince  string `json:"awaitingReplySince"`
	Assignee            string `json:"assignee"`
	AssigneeDisplayName string `json:"assigneeDisplayName"`
}

func (c *client) triage(query string) []triagedConversation {
	c.t.Helper()
	var out struct{ Conversations []triagedConversation }
	require.Equal(c.t, 200, c.do("GET", "/v1/conversations"+query, nil, &out))
	return out.Conversations
}

func names(cs []triagedConversation) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Name
	}
	return out
}

// A patient writes and the thread is awaiting a reply since that message,
// longest-waiting first; a staff member assigns it to a colleague the practice
// has seen, the colleague finds it under their name and answers, and it leaves
// needs reply. Patients get none of this; assignments are audited and streamed.
func TestNeedsReplyAndAssignment(t *testing.T) {
	h := harness{t: t, in: start(t, t.TempDir())}
	lee := h.asNamed("dr-lee", "dentist", "Dr Grace Lee")
	amy := h.asNamed("amy", "front_desk", "Amy Front")
	admin := h.as("adam", "practice_admin")
	alice := h.as("alice", "patient")
	jose := h.as("jose", "patient")
	since := `time>="` + time.Now().UTC().Format(time.RFC3339Nano) + `"`

	aliceConv := lee.startConversation("alice")
	joseConv := lee.startConversation("jose")
	first := alice.send(aliceConv.Name, "Can I move my appointment?", reqID("nr", 1))
	alice.send(aliceConv.Name, "Thursday would suit me", reqID("nr", 2))
	jose.send(joseConv.Name, "Is my crown ready?", reqID("nr", 3))

	var waiting []triagedConversation
	require.Eventually(t, func() bool {
		waiting = lee.triage("?awaitingReply=true")
		return len(waiting) == 2
	}, 10*time.Second, 20*time.Millisecond, "both threads need a reply")
	require.Equal(t, []string{aliceConv.Name, joseConv.Name}, names(waiting), "longest-waiting first")
	require.Equal(t, first.CreateTime, waiting[0].AwaitingReplySince, "since the oldest unanswered message")

	// Patients get none of it.
	var raw map[string]any
	require.Equal(t, 200, alice.do("GET", "/v1/"+aliceConv.Name, nil, &raw))
	require.Nil(t, raw["awaitingReplySince"], "a patient does not see needs reply")
	var e apiError
	require.Equal(t, 403, alice.do("GET", "/v1/conversations?awaitingReply=true", nil, &e))
	require.Equal(t, 403, alice.do("POST", "/v1/"+aliceConv.Name+":assign", map[string]any{"assignee": "users/amy"}, &e))
	require.Equal(t, 404, jose.do("POST", "/v1/"+aliceConv.Name+":assign", map[string]any{"assignee": "users/amy"}, &e))
	require.Equal(t, 403, alice.do("GET", "/v1/staff", nil, &e))

	// The practice knows the staff who used it, with their names.
	var staff struct {
		Staff []struct{ Name, DisplayName, Role string }
	}
	require.Equal(t, 200, lee.do("GET", "/v1/staff", nil, &staff))
	require.Contains(t, staff.Staff, struct{ Name, DisplayName, Role string }{"users/dr-lee", "Dr Grace Lee", "dentist"})
	require.Empty(t, amy.triage("?assignee=users/amy"), "amy has now used the practice too")
	require.Equal(t, 200, lee.do("GET", "/v1/staff", nil, &staff))
	require.Contains(t, staff.Staff, struct{ Name, DisplayName, Role string }{"users/amy", "Amy Front", "front_desk"})

	require.Equal(t, 400, lee.do("POST", "/v1/"+aliceConv.Name+":assign", map[string]any{"assignee": "users/nobody"}, &e))
	require.Equal(t, "INVALID_ARGUMENT", e.reason())
	require.Contains(t, e.Message, "users/nobody", "names who cannot be assigned")
	require.Equal(t, 400, lee.do("POST", "/v1/"+aliceConv.Name+":assign", map[string]any{"assignee": "amy"}, &e))

	leeEvents := lee.events("")
	var assigned triagedConversation
	require.Equal(t, 200, lee.do("POST", "/v1/"+aliceConv.Name+":assign", map[string]any{"assignee": "users/amy"}, &assigned))
	require.Equal(t, triagedConversation{Name: aliceConv.Name, AwaitingReplySince: first.CreateTime, Assignee: "users/amy",
		AssigneeDisplayName: "Amy Front"}, assigned)
	for {
		ev := leeEvents.next(t, "conversation.updated")
		var c triagedConversation
		require.NoError(t, json.Unmarshal(ev.Data["conversation"], &c))
		if c.Name == aliceConv.Name && c.Assignee == "users/amy" {
			break
		}
	}

	mine := amy.triage("?assignee=users/amy")
	require.Equal(t, []string{aliceConv.Name}, names(mine), "assigned to amy")
	require.Equal(t, []string{aliceConv.Name}, names(amy.triage("?awaitingReply=true&assignee=users/amy")))
	require.Equal(t, 200, alice.do("GET", "/v1/"+aliceConv.Name, nil, &raw))
	require.Empty(t, raw["assignee"], "a patient does not see who the thread is assigned to")
	require.Empty(t, raw["assigneeDisplayName"])

	amy.send(aliceConv.Name, "Thursday at 10 is yours", reqID("nr", 4))
	require.Eventually(t, func() bool {
		w := lee.triage("?awaitingReply=true")
		return len(w) == 1 && w[0].Name == joseConv.Name
	}, 10*time.Second, 20*time.Millisecond, "a staff reply clears needs reply")

	require.Equal(t, 200, lee.do("POST", "/v1/"+aliceConv.Name+":assign", map[string]any{"assignee": ""}, &assigned))
	require.Empty(t, assigned.Assignee)
	require.Empty(t, lee.triage("?assignee=users/amy"))

	type key struct{ actor, resource, outcome string }
	want := map[key]int{
		{"users/dr-lee", aliceConv.Name, "ALLOWED"}:  2,
		{"patients/alice", aliceConv.Name, "DENIED"}: 1,
		{"patients/jose", aliceConv.Name, "DENIED"}:  1,
	}
	require.Eventually(t, func() bool {
		got := map[key]int{}
		for _, ev := range admin.auditEvents(since + ` AND action="conversation.assign"`) {
			got[key{ev.Actor, ev.Resource, ev.Outcome}]++
		}
		return assertEqualMaps(want, got)
	}, 15*time.Second, 50*time.Millisecond, "assignments and refused attempts are audited")
}

func assertEqualMaps[K comparable](a, b map[K]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
