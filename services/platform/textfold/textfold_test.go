package textfold

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFold(t *testing.T) {
	for in, want := range map[string]string{
		"":                "",
		"Bench Patient 3": "bench patient 3", // ASCII: the fast path
		"José GARCÍA":     "jose garcia",
		"Ærøskøbing Ünal": "ærøskøbing unal",
	} {
		require.Equal(t, want, Fold(in), in)
	}
	require.Equal(t, "jose garcia o brien", Key("  José  García, O-Brien"))
	require.Equal(t, []string{"a1", "b"}, Words("A1 - b"))
}

func BenchmarkFoldASCII(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = Fold("Bench Patient 12")
	}
}
