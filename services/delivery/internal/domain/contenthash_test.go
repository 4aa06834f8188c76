package domain

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// jsonContentHash is ContentHash as it was first written (the hashes stored
// with every message): ContentHash must give the same for every input.
func jsonContentHash(conversationID, text string, sensitive bool, attachments []string, artifactType int, artifactRef string) string {
	b, _ := json.Marshal([]any{conversationID, text, sensitive, attachments, artifactType, artifactRef})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func TestContentHashIsJSONMarshals(t *testing.T) {
	t.Parallel()
	pieces := []string{"", "a", "Your crown is ready", "0193b5c1e2f4", "é", "日本", "😀", "\"", "\\", "<", ">", "&",
		"\n", "\t", "\x00", "\x1f", "\x7f", "\u2028", "\u2029", "\u2027", "\xff", "\xe2\x80", "\ufffd", "/", "'", " "}
	rnd := rand.New(rand.NewPCG(1, 2))
	str := func() string {
		s := ""
		for range rnd.IntN(5) {
			s += pieces[rnd.IntN(len(pieces))]
		}
		return s
	}
	plain, escaped := 0, 0
	for range 20000 {
		var atts []string
		switch rnd.IntN(3) {
		case 1:
			atts = []string{}
		case 2:
			for range 1 + rnd.IntN(3) {
				atts = append(atts, str())
			}
		}
		conv, text, ref := str(), str(), str()
		sens, typ := rnd.IntN(2) == 1, rnd.IntN(5)-1
		want := jsonContentHash(conv, text, sens, atts, typ, ref)
		require.Equal(t, want, ContentHash(conv, text, sens, atts, typ, ref), "%q %q %v %q %d %q", conv, text, sens, atts, typ, ref)
		if _, ok := contentJSON(nil, conv, text, sens, atts, typ, ref); ok {
			plain++
		} else {
			escaped++
		}
	}
	// Both ways were taken often.
	require.Greater(t, plain, 500)
	require.Greater(t, escaped, 2000)
}

func FuzzContentHash(f *testing.F) {
	f.Add("c1", "Your crown is ready", false, "attachments/a", 0, "")
	f.Add("c1", "<b>\u2028\xff", true, "", 2, "inv-1")
	f.Fuzz(func(t *testing.T, conv, text string, sens bool, att string, typ int, ref string) {
		for _, atts := range [][]string{nil, {}, {att}, {att, text}} {
			if got, want := ContentHash(conv, text, sens, atts, typ, ref), jsonContentHash(conv, text, sens, atts, typ, ref); got != want {
				t.Fatalf("ContentHash(%q, %q, %v, %q, %d, %q) = %s, json.Marshal's %s", conv, text, sens, atts, typ, ref, got, want)
			}
		}
	})
}

func BenchmarkContentHash(b *testing.B) {
	b.ReportAllocs()
	for range b.N {
		ContentHash("0193b5c1e2f47a8b9c0d1e2f3a", "Your crown is ready: see you on Tuesday at 10:30", false, nil, 0, "")
	}
}

func BenchmarkContentHashJSON(b *testing.B) {
	b.ReportAllocs()
	for range b.N {
		jsonContentHash("0193b5c1e2f47a8b9c0d1e2f3a", "Your crown is ready: see you on Tuesday at 10:30", false, nil, 0, "")
	}
}
