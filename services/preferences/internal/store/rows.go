package store

import (
	"strings"

	"github.com/clinicchat/clinicchat/services/preferences/internal/domain"
)

// Prefix ranks: how a prefix row relates to the name it indexes.
const (
	rankWholeName = 0 // the name is exactly this one word
	rankWholeWord = 1 // the prefix is a whole word of the name
	rankPrefix    = 2 // the prefix only starts a word of the name
)

// searchRow is what the store derives from a display name for search.
type searchRow struct {
	nameKey    string // folded words joined by single spaces
	searchText string // " w1 w2 … ": every indexed word, space-delimited
	prefixes   []prefixRow
}

// prefixRow is one row of patient_prefixes: a prefix of an indexed word of
// the name, with the best rank it has in that name.
type prefixRow struct {
	prefix string
	rank   int
}

// deriveSearch computes the search keys of a display name: every prefix (by
// rune) of every indexed word, once, with its best rank.
func deriveSearch(displayName string) searchRow {
	nw := domain.SplitName(displayName)
	row := searchRow{nameKey: nw.Key(), searchText: " " + strings.Join(nw.Index, " ") + " "}
	best := map[string]int{}
	var order []string
	for _, w := range nw.Index {
		for i := range w {
			if i == 0 {
				continue
			}
			p := w[:i]
			if _, ok := best[p]; !ok {
				best[p] = rankPrefix
				order = append(order, p)
			}
		}
		r := rankWholeWord
		if w == row.nameKey {
			r = rankWholeName
		}
		if old, ok := best[w]; !ok {
			best[w] = r
			order = append(order, w)
		} else if r < old {
			best[w] = r
		}
	}
	row.prefixes = make([]prefixRow, 0, len(order))
	for _, p := range order {
		row.prefixes = append(row.prefixes, prefixRow{prefix: p, rank: best[p]})
	}
	return row
}
