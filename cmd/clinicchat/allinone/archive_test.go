package allinone_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
)

// "Old conversation gone: archived after 12 months of inactivity; search the
// Archived tab" — with the period shortened: an idle thread leaves the
// default list for archived=true, and a new message reactivates it.
func TestIdleConversationsArchiveAndReactivate(t *testing.T) {
	in := startWith(t, t.TempDir(), func(c *allinone.Config) {
		c.ArchiveAfter = 1500 * time.Millisecond
		c.ArchiveSweepInterval = 50 * time.Millisecond
	})
	h := harness{t: t, in: in}
	staff := h.as("dr-lee", "dentist")
	conv := staff.startConversation("alice")
	staff.send(conv.Name, "see you next year", reqID("a", 0))

	require.Eventually(t, func() bool {
		archived := staff.conversations("?archived=true")
		return len(archived) == 1 && archived[0].Name == conv.Name && archived[0].State == "ARCHIVED"
	}, 10*time.Second, 20*time.Millisecond)
	require.Empty(t, staff.conversations(""), "archived threads leave the default list")
	var got conversation
	require.Equal(t, 200, staff.do("GET", "/v1/"+conv.Name, nil, &got), "nothing is deleted")
	require.Equal(t, 200, staff.do("POST", "/v1/conversations", map[string]any{"patient": "patients/alice"}, &got))
	require.Equal(t, conv.Name, got.Name, "find or start finds the archived thread")

	staff.send(conv.Name, "a year later", reqID("b", 0))
	require.Eventually(t, func() bool {
		list := staff.conversations("")
		return len(list) == 1 && list[0].Name == conv.Name && list[0].State == "ACTIVE" && list[0].LastMessagePreview == "a year later"
	}, 10*time.Second, 10*time.Millisecond, "a new message reactivates the thread")
}
