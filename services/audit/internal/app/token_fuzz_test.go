package app

import (
	"testing"

	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
)

// FuzzPageToken: any page token decodes or fails cleanly, and a decoded
// cursor encodes back to a token of the same cursor.
func FuzzPageToken(f *testing.F) {
	f.Add(encodeToken(domain.Cursor{TimeMicros: 1700000000000000, Index: 42}, "abcd"), "abcd")
	f.Add("djEuMS4yLmFiY2Q", "abcd")
	f.Add("!!", "")
	f.Fuzz(func(t *testing.T, tok, fp string) {
		c, err := decodeToken(tok, fp)
		if err != nil {
			return
		}
		again, err := decodeToken(encodeToken(c, fp), fp)
		if err != nil || again != c {
			t.Fatalf("%q: %+v then %+v (%v)", tok, c, again, err)
		}
	})
}
