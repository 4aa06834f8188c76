// Package ids makes opaque, URL-safe, unguessable resource ids.
package ids

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"strings"
	"time"
)

var enc = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// New returns a random 26-character id (128 bits) of lower-case letters and digits.
func New() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms.
	return enc.EncodeToString(b[:])
}

// sortedEnc is base32 with its alphabet in byte order (the same characters
// as enc), so that encoded ids sort as their bytes do.
var sortedEnc = base32.NewEncoding("234567abcdefghijklmnopqrstuvwxyz").WithPadding(base32.NoPadding)

// NewOrdered returns a 26-character id of lower-case letters and digits, like
// New, whose first 48 bits are at in milliseconds and the other 80 random:
// ids made close in time sort close together, so an index of them (the
// outbox's, the audit log's event ids) grows at its end instead of writing a
// random page of a large index for every id (issue 10).
func NewOrdered(at time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(at.UnixMilli())<<16)
	_, _ = rand.Read(b[6:]) // crypto/rand.Read never fails on supported platforms.
	return sortedEnc.EncodeToString(b[:])
}

// Valid reports whether s may stand as one segment of a resource name: 1 to 128
// characters of letters, digits, '-', '_' and '.'.
func Valid(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		default:
			return false
		}
	}
	return true
}

// Parse splits an AIP resource name such as "conversations/c1/messages/m2"
// against the collection ids given ("conversations", "messages") and returns
// the ids. ok is false when the name does not have exactly that shape.
func Parse(name string, collections ...string) (idsOut []string, ok bool) {
	// Exactly 2n-1 slashes: the name splits into 2n parts. Cut rather than
	// strings.Split, so that the ids out are the only allocation.
	if strings.Count(name, "/") != 2*len(collections)-1 {
		return nil, false
	}
	out := make([]string, len(collections))
	rest := name
	for i, c := range collections {
		coll, r, _ := strings.Cut(rest, "/")
		id, r, _ := strings.Cut(r, "/")
		if coll != c || !Valid(id) {
			return nil, false
		}
		out[i], rest = id, r
	}
	return out, true
}
