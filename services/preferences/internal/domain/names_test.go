package domain

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFold(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"José García": "jose garcia",
		"ZOË":         "zoe",
		"Weiß":        "weiss",
		"Søren Ærø":   "soren aero",
		"Łukasik":     "lukasik",
		"İlker":       "ilker",
		"Ｊｏｓé":        "jose", // full-width forms fold by NFKD
		"Nguyễn":      "nguyen",
		"Dąbrowski":   "dabrowski",
		"Ольга":       "ольга",
	} {
		require.Equal(t, want, Fold(in), in)
	}
}

func TestSplitName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		words []string
		index []string
	}{
		{"José García", []string{"jose", "garcia"}, []string{"jose", "garcia"}},
		{"  María   José  ", []string{"maria", "jose"}, []string{"maria", "jose"}},
		{"Seán O'Brien", []string{"sean", "o", "brien"}, []string{"sean", "o", "brien", "obrien"}},
		{"Ana García-López", []string{"ana", "garcia", "lopez"}, []string{"ana", "garcia", "lopez", "garcialopez"}},
		{"Dr. Anna (Ann) Smith", []string{"dr", "anna", "ann", "smith"}, []string{"dr", "anna", "ann", "smith"}},
		{"Ann Ann", []string{"ann", "ann"}, []string{"ann"}},
		{"---", nil, nil},
	} {
		got := SplitName(tc.name)
		require.Equal(t, tc.words, got.Words, tc.name)
		require.Equal(t, tc.index, got.Index, tc.name)
		require.Equal(t, strings.Join(tc.words, " "), got.Key(), tc.name)
	}
}

func TestQueryWords(t *testing.T) {
	t.Parallel()
	for q, want := range map[string][]string{
		"jose gar":     {"jose", "gar"},
		"JOSÉ  García": {"jose", "garcia"},
		"o'brien":      {"o", "brien"},
		"garcía-lópez": {"garcia", "lopez"},
		"ana ana":      {"ana"},
		"  ":           nil,
		"%_":           nil,
	} {
		require.Equal(t, want, QueryWords(q), q)
	}
	long := strings.Repeat("é", 100)
	require.LessOrEqual(t, len(QueryWords(long)[0]), MaxWordBytes)
}

// TestMatchRule checks the rule behind search on folded words: every query
// word must start some indexed word of the name.
func TestMatchRule(t *testing.T) {
	t.Parallel()
	matches := func(query, name string) bool {
		idx := SplitName(name).Index
		for _, q := range QueryWords(query) {
			ok := false
			for _, w := range idx {
				if strings.HasPrefix(w, q) {
					ok = true
				}
			}
			if !ok {
				return false
			}
		}
		return true
	}
	for _, tc := range []struct {
		query, name string
		want        bool
	}{
		{"jose gar", "José García", true},
		{"JOSE GARCIA", "josé garcía", true},
		{"gar jose", "José García", true},
		{"ose", "José García", false},
		{"jose garx", "José García", false},
		{"obrien", "Seán O'Brien", true},
		{"brien", "Seán O'Brien", true},
		{"lopez", "Ana García-López", true},
		{"garcialo", "Ana García-López", true},
		{"soren", "Søren Østergaard", true},
		{"weiss", "Jörg Weiß", true},
	} {
		require.Equal(t, tc.want, matches(tc.query, tc.name), "%q in %q", tc.query, tc.name)
	}
}

func TestEligibility(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		portal, optIn bool
		ok            bool
		why           IneligibleReason
	}{
		{true, true, true, Eligible},
		{true, false, false, ChatOptedOut},
		{false, true, false, NoPortalAccount},
		{false, false, false, NoPortalAccount}, // the portal account is reported first
	} {
		p := Patient{HasPortalAccount: tc.portal, ChatOptIn: tc.optIn}
		ok, why := p.Eligibility()
		require.Equal(t, tc.ok, ok)
		require.Equal(t, tc.why, why)
	}
}
