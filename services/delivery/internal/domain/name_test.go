package domain

import (
	"strconv"
	"strings"
	"testing"
)

// TestMessageNameInOneAllocation: the name as AIP spells it, in one
// allocation, for short and long thread ids and any seq.
func TestMessageNameInOneAllocation(t *testing.T) {
	for _, m := range []Message{
		{ConversationID: "c1", Seq: 7},
		{ConversationID: "01JF0Z8Q3W5Y7B9D1F3H5K7M9P", Seq: 123456789},
		{ConversationID: strings.Repeat("x", 128), Seq: -1},
		{ConversationID: "", Seq: 0},
	} {
		want := "conversations/" + m.ConversationID + "/messages/" + strconv.FormatInt(m.Seq, 10)
		if got := m.Name(); got != want {
			t.Errorf("Name() = %q, want %q", got, want)
		}
		if allocs := testing.AllocsPerRun(100, func() { _ = m.Name() }); allocs > 1 {
			t.Errorf("Name() of %q: %v allocations, want 1", m.ConversationID, allocs)
		}
	}
}
