package app

import (
	"testing"

	"github.com/clinicchat/clinicchat/services/preferences/internal/domain"
)

// FuzzPageToken: any page token decodes or fails cleanly, and a decoded
// cursor encodes back to a token of the same cursor.
func FuzzPageToken(f *testing.F) {
	f.Add(encodeToken(domain.Cursor{Tier: 1, ID: "alice"}, 7), uint64(7))
	f.Add(encodeToken(domain.Cursor{Tier: 0, ID: "a.b.c"}, 0xfff), uint64(0xfff))
	f.Add("@@", uint64(0))
	f.Fuzz(func(t *testing.T, tok string, fp uint64) {
		c, err := decodeToken(tok, fp)
		if err != nil {
			return
		}
		again, err := decodeToken(encodeToken(*c, fp), fp)
		if err != nil || *again != *c {
			t.Fatalf("%q: %+v then %+v (%v)", tok, c, again, err)
		}
	})
}
