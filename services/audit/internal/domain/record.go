// Package domain holds the audit log's types and rules: what an audit record
// is, its canonical leaf encoding in the practice's Merkle tree, which events
// count as actions, the list filter language, and the repository port.
package domain

import (
	"crypto/sha256"
	"strconv"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// Outcome says whether an audited action was carried out or refused.
type Outcome string

// Outcomes, stored and shown exactly like this.
const (
	OutcomeAllowed Outcome = "ALLOWED"
	OutcomeDenied  Outcome = "DENIED"
)

// Entry is one published event's metadata: who did what to which resource,
// when, and with what outcome. It holds ids and roles only, never PHI.
type Entry struct {
	EventID   string    // the event's meta.id (also its Nats-Msg-Id); unique in the log
	Time      time.Time // when the action happened, UTC, microsecond precision
	Practice  string    // the tenant whose log the record joins
	Actor     string    // "users/{u}", "patients/{p}" or "system"
	ActorRole string    // the actor's role claim
	Action    string    // dotted action, e.g. "message.send"
	Resource  string    // AIP resource name acted on
	Outcome   Outcome
	Detail    string // non-PHI detail: a reason code, a count
}

// Record is an Entry appended to its practice's log at Index.
type Record struct {
	Entry
	Index int64 // 0-based leaf index in the practice's log
	// Hash is the leaf hash as stored (RFC 6962 record hash of Leaf()).
	Hash tlog.Hash
}

// Normalize returns e with its time in UTC at the precision the store keeps
// (microseconds), so a record read back hashes like the one appended.
func (e Entry) Normalize() Entry {
	e.Time = time.UnixMicro(e.Time.UnixMicro()).UTC()
	if e.Outcome == "" {
		e.Outcome = OutcomeAllowed
	}
	return e
}

// leafHeader starts every leaf and versions the encoding.
const leafHeader = "clinicchat audit record v1\n"

// Leaf is the canonical encoding of the record: the bytes whose RFC 6962
// record hash is the record's leaf in the practice's Merkle tree. One line per
// field, in a fixed order; numbers in decimal, strings length-prefixed
// ("actor 7:users/u"), so no value can be confused with another field:
//
//	clinicchat audit record v1
//	index 0
//	time 1767225600000000          (UTC microseconds since the Unix epoch)
//	practice 4:demo
//	actor 7:users/u
//	actor_role 7:dentist
//	action 12:message.send
//	resource 26:conversations/c/messages/m
//	outcome 7:ALLOWED
//	detail 0:
//	event_id 26:…
func (r Record) Leaf() []byte { return r.appendLeaf(make([]byte, 0, 512)) }

// appendLeaf appends the record's Leaf to b.
func (r Record) appendLeaf(b []byte) []byte {
	b = append(b, leafHeader...)
	num := func(k string, v int64) {
		b = append(b, k...)
		b = append(b, ' ')
		b = strconv.AppendInt(b, v, 10)
		b = append(b, '\n')
	}
	str := func(k, v string) {
		b = append(b, k...)
		b = append(b, ' ')
		b = strconv.AppendInt(b, int64(len(v)), 10)
		b = append(b, ':')
		b = append(b, v...)
		b = append(b, '\n')
	}
	num("index", r.Index)
	num("time", r.Time.UnixMicro())
	str("practice", r.Practice)
	str("actor", r.Actor)
	str("actor_role", r.ActorRole)
	str("action", r.Action)
	str("resource", r.Resource)
	str("outcome", string(r.Outcome))
	str("detail", r.Detail)
	str("event_id", r.EventID)
	return b
}

// LeafHash recomputes the record's leaf hash from its fields.
// It is tlog.RecordHash(r.Leaf()), SHA256(0x00 || leaf), with the leaf
// written into a buffer on the stack instead of two on the heap (the leaf
// and tlog's hash state).
func (r Record) LeafHash() tlog.Hash {
	var buf [512]byte
	return sha256.Sum256(r.appendLeaf(append(buf[:0], 0)))
}

// Matches reports whether the stored hash is the hash of the stored fields.
func (r Record) Matches() bool { return r.Hash == r.LeafHash() }
