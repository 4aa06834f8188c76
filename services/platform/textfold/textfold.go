// Package textfold folds names for case- and accent-insensitive word-prefix
// matching ("José García" → ["jose", "garcia"]).
package textfold

import (
	"strings"
	"unicode"

	"golang.org/x/text/runes"
	"golang.org/x/text/transform"
	"golang.org/x/text/unicode/norm"
)

// Fold lower-cases s and strips accents.
func Fold(s string) string {
	if isASCII(s) {
		return strings.ToLower(s) // nothing to decompose: skip the transformer
	}
	t := transform.Chain(norm.NFD, runes.Remove(runes.In(unicode.Mn)), norm.NFC)
	out, _, err := transform.String(t, s)
	if err != nil {
		out = s
	}
	return strings.ToLower(out)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// Words splits the folded s into words of letters and digits.
func Words(s string) []string {
	return strings.FieldsFunc(Fold(s), func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) })
}

// Key is the folded words joined by single spaces.
func Key(s string) string { return strings.Join(Words(s), " ") }
