package domain

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// TestLeafHashIsTheRecordHashOfTheLeaf: LeafHash is RFC 6962's record hash of
// Leaf (tlog.RecordHash), for records whose leaf fits the stack buffer and
// for one that does not, and a usual record's costs no allocation.
func TestLeafHashIsTheRecordHashOfTheLeaf(t *testing.T) {
	usual := Record{Entry: Entry{EventID: "01JF0Z8Q3W5Y7B9D1F3H5K7M9P", Time: time.UnixMicro(1767225600123456).UTC(),
		Practice: "demo", Actor: "users/dr-lee", ActorRole: "dentist", Action: "message.send",
		Resource: "conversations/01JF0Z8Q3W5Y7B9D1F3H5K7M9P/messages/300", Outcome: OutcomeAllowed}, Index: 123456}
	long := usual
	long.Detail = strings.Repeat("d", 600)
	for _, r := range []Record{usual, long, {}} {
		if got, want := r.LeafHash(), tlog.RecordHash(r.Leaf()); got != want {
			t.Errorf("LeafHash of %+v = %x, want %x", r.Entry, got, want)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { _ = usual.LeafHash() }); allocs > 0 {
		t.Errorf("LeafHash: %v allocations, want none", allocs)
	}
}
