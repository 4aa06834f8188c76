package allinone_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
)

// The export pages through the delivery service (200 messages a page) and
// writes the PDF as it goes: a thread of several pages comes out whole and
// oldest first. (A thread of thousands is TestThreadPDFLongThread in the
// gateway package, without the sends.)
func TestConversationPDFExportPagesThroughLongThread(t *testing.T) {
	const n = 450 // pages of 200, 200 and 50
	h := harness{t: t, in: startWith(t, t.TempDir(), func(c *allinone.Config) {
		c.Limits.SendsPerSecond, c.Limits.SendBurst = 1e6, 1e6 // this test sends faster than a person
	})}
	lee := h.asNamed("dr-lee", "dentist", "Dr Grace Lee")
	alice := h.as("alice", "patient")
	conv := lee.startConversation("alice")
	for i := range n {
		from := lee
		if i%2 == 0 {
			from = alice
		}
		from.send(conv.Name, fmt.Sprintf("Line %03d of the long thread", i), reqID("pdf-long", i))
	}
	resp, body := lee.get("/v1/" + conv.Name + ":export")
	require.Equal(t, 200, resp.StatusCode, "%s", body)
	require.Equal(t, "application/pdf", resp.Header.Get("Content-Type"))
	text := strings.Join(strings.Fields(pdfText(t, body)), " ")
	require.Contains(t, text, fmt.Sprintf("Messages: %d,", n))
	require.Equal(t, n, strings.Count(text, " of the long thread"), "every message once")
	prev := -1
	for i := range n {
		at := strings.Index(text, fmt.Sprintf("Line %03d of the long thread", i))
		require.Greater(t, at, prev, "message %d, after the one before", i)
		prev = at
	}
	require.Contains(t, text, "Alice Johnson (patient)")
	require.Contains(t, text, "Dr Grace Lee (dentist)")
}
