package domain

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
)

// Name search keys. A display name is folded for search: case-folded
// (cases.Fold: "ß" becomes "ss"), decomposed (NFKD) with combining marks
// removed ("José" becomes "jose"), and the few Latin letters that do not
// decompose spelled the way people type them ("Søren" becomes "soren",
// "Æsa" becomes "aesa"). It is then split into words: runs of letters and
// digits. Apostrophes and hyphens join parts of one word, and such a word is
// indexed both whole and by part, so "O'Brien" is found by "obrien", "o'brien"
// and "brien", and "García-López" by "garcialopez", "garcia" and "lopez".

// MaxWordBytes bounds one indexed word; longer words are cut (at a rune
// boundary), which only makes them match their first MaxWordBytes bytes.
const MaxWordBytes = 64

// foldSpecial spells letters that have no canonical decomposition.
var foldSpecial = map[rune]string{
	'ø': "o", 'æ': "ae", 'œ': "oe", 'ł': "l", 'đ': "d", 'ð': "d", 'þ': "th", 'ı': "i", 'ŀ': "l", 'ħ': "h", 'ŧ': "t",
}

// Fold returns s case-folded, without accents, for comparison.
func Fold(s string) string {
	s = norm.NFKD.String(cases.Fold().String(s))
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		if unicode.Is(unicode.Mn, r) {
			continue
		}
		if sp, ok := foldSpecial[r]; ok {
			b.WriteString(sp)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func isWordRune(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) }

// joiner reports punctuation that joins the parts of one word.
func joiner(r rune) bool {
	switch r {
	case '\'', '’', '‘', 'ʼ', '-', '‐', '‑', '–':
		return true
	}
	return false
}

// NameWords is the folded form of a name: its words in order (Key) and every
// word to index for prefix search (Index: the words, plus joined forms of
// hyphenated or apostrophized words), without duplicates.
type NameWords struct {
	// Words are the words of the name in order ("o", "brien" for "O'Brien").
	Words []string
	// Index is every indexed word: Words plus the joined forms ("obrien").
	Index []string
}

// Key is the folded words joined by single spaces: the sort key of a name and
// the form an exact full-name match compares.
func (n NameWords) Key() string { return strings.Join(n.Words, " ") }

// SplitName folds s and splits it into words.
func SplitName(s string) NameWords {
	f := Fold(s)
	var out NameWords
	seen := map[string]bool{}
	add := func(w string) {
		w = clip(w)
		if w == "" || seen[w] {
			return
		}
		seen[w] = true
		out.Index = append(out.Index, w)
	}
	// Tokens are separated by anything that is neither a word rune nor a joiner.
	for _, tok := range strings.FieldsFunc(f, func(r rune) bool { return !isWordRune(r) && !joiner(r) }) {
		parts := strings.FieldsFunc(tok, func(r rune) bool { return !isWordRune(r) })
		for _, p := range parts {
			out.Words = append(out.Words, clip(p))
			add(p)
		}
		if len(parts) > 1 {
			add(strings.Join(parts, ""))
		}
	}
	return out
}

// QueryWords folds a search query into its words, without duplicates, in
// order. Each must match the start of some indexed word of a name.
func QueryWords(q string) []string {
	var out []string
	seen := map[string]bool{}
	for _, w := range strings.FieldsFunc(Fold(q), func(r rune) bool { return !isWordRune(r) }) {
		w = clip(w)
		if !seen[w] {
			seen[w] = true
			out = append(out, w)
		}
	}
	return out
}

func clip(w string) string {
	if len(w) <= MaxWordBytes {
		return w
	}
	cut := MaxWordBytes
	for cut > 0 && !utf8.RuneStart(w[cut]) {
		cut--
	}
	return w[:cut]
}

// PrefixEnd is the smallest string greater than every string that starts with
// prefix and continues with letters or digits: the exclusive upper bound of a
// word-prefix range scan. U+10FFFF is valid UTF-8 and greater than any letter.
func PrefixEnd(prefix string) string { return prefix + "\U0010FFFF" }
