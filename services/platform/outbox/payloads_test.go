package outbox

import (
	"testing"
	"time"
)

// An id handed over again after its first payload was taken keeps its new
// payload until that one is old: the first hand-over's entry, older, must
// not evict it.
func TestPayloadsRehandedIDOutlivesItsFirstEntry(t *testing.T) {
	p := newPayloads(16)
	first := row{seq: 1, id: "e1", payload: []byte("first"), created: 100}
	p.push([]row{first})
	// The first hand-over happened long ago.
	old := time.Now().Add(-2 * payloadAge)
	p.order[0].at = old
	e := p.byID["e1"]
	e.at = old
	p.byID["e1"] = e
	if missing := p.fill([]row{{seq: 1, id: "e1", created: 100}}); len(missing) != 0 {
		t.Fatalf("first claim: missing %v", missing)
	}

	again := row{seq: 7, id: "e1", payload: []byte("again"), created: 200}
	p.push([]row{again})
	p.evict(time.Now())

	rows := []row{{seq: 7, id: "e1", created: 200}}
	if missing := p.fill(rows); len(missing) != 0 {
		t.Fatalf("the new payload was evicted with its id's first entry: missing %v", missing)
	}
	if string(rows[0].payload) != "again" {
		t.Fatalf("payload = %q, want %q", rows[0].payload, "again")
	}
}

// Payloads older than payloadAge go; younger ones stay, and order keeps
// only live entries once compacted.
func TestPayloadsEvictByAge(t *testing.T) {
	p := newPayloads(16)
	p.push([]row{{seq: 1, id: "a", payload: []byte("a"), created: 1}, {seq: 2, id: "b", payload: []byte("b"), created: 2}})
	p.evict(time.Now().Add(payloadAge + time.Second))
	if !p.empty() || len(p.order) != 0 {
		t.Fatalf("after payloadAge: %d payloads, %d entries left", len(p.byID), len(p.order))
	}
	p.push([]row{{seq: 3, id: "c", payload: []byte("c"), created: 3}})
	p.evict(time.Now())
	if p.empty() {
		t.Fatal("a young payload was evicted")
	}
}
