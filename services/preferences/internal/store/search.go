package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/preferences/internal/domain"
)

// Search plan (measurements in ../../BENCHMARKS.md).
//
// patient_prefixes holds one row per prefix of every indexed word of a name,
// keyed (practice, prefix, rank, name_key, patient_id), with the name's
// search_text and the patient's eligibility in the row. For a query word d,
// "prefix = d AND rank = r" is an index range already in name order, so a
// page is read straight off the index and the scan stops as soon as the page
// is full, however many patients match. The other query words are checked on
// the same index row (search_text contains " w" or " w "), so no other table
// is touched until the page is known.
//
// Each tier is a few such ordered streams, each limited to the page size,
// UNIONed in one statement; the database merges at most a few pages of rows:
//
//	tier 0 (whole name):  patients WHERE name_key = query key (by index)
//	tier 1 (whole words): the rank 1 rows of the word with the fewest
//	                      whole-word rows, every other word whole
//	tier 2 (prefixes):    per query word i that is only a prefix (S_i, see
//	                      plan), the rows of the word that promises fewest
//
// Tiers 0 and 1 run first; tier 2 only when they leave the page short. The
// per-prefix patient counts of prefix_counts pick the driving words and drop
// streams that cannot have rows (a word that is nowhere a whole word, or
// nowhere only a prefix) — those would otherwise scan every row of their
// driving word for nothing.
//
// Without query words, patients are listed by name from patients_by_name (or
// its partial twin, eligible patients only).

// SearchPatients implements domain.Repository.
func (s *Store) SearchPatients(ctx context.Context, q domain.SearchQuery) ([]domain.SearchHit, error) {
	var after *cursorKey
	if q.After != nil {
		var nameKey string
		err := s.db.QueryRow(ctx, `SELECT name_key FROM patients WHERE practice = ? AND id = ?`, q.Practice, q.After.ID).Scan(&nameKey)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, domain.ErrBadPageToken
		}
		if err != nil {
			return nil, fmt.Errorf("read page cursor: %w", err)
		}
		after = &cursorKey{tier: q.After.Tier, nameKey: nameKey, id: q.After.ID}
	}
	if len(q.Words) == 0 {
		return s.listByName(ctx, q, after)
	}
	pl, err := s.plan(ctx, q.Practice, q.Words)
	if err != nil {
		return nil, err
	}
	// Tiers 0 and 1 first; tier 2 (whose streams can be the longest) only
	// when they leave the page short.
	var out []domain.SearchHit
	for _, tiers := range [][2]int{{0, 1}, {2, 2}} {
		need := q.Limit - len(out)
		if need <= 0 {
			break
		}
		sb := searchSQL{practice: q.Practice, limit: need, after: after, eligibleOnly: !q.IncludeIneligible, contains: `instr(x.search_text, ?)`}
		if s.db.Dialect() == sqldb.Postgres {
			sb.contains = `strpos(x.search_text, ?)`
		}
		query, args := sb.build(q.Words, pl, tiers[0], tiers[1])
		if query == "" {
			continue
		}
		hits, err := s.runSearch(ctx, q.Practice, query, args)
		if err != nil {
			return nil, err
		}
		out = append(out, hits...)
	}
	return out, nil
}

func (s *Store) runSearch(ctx context.Context, practice, query string, args []any) ([]domain.SearchHit, error) {
	rows, err := s.db.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("search patients: %w", err)
	}
	defer rows.Close()
	var out []domain.SearchHit
	for rows.Next() {
		var tier int
		p, err := scanPatient(practice, rows, &tier)
		if err != nil {
			return nil, fmt.Errorf("search patients: %w", err)
		}
		out = append(out, domain.SearchHit{Patient: *p, Tier: tier})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("search patients: %w", err)
	}
	return out, nil
}

type cursorKey struct {
	tier    int
	nameKey string
	id      string
}

func (s *Store) listByName(ctx context.Context, q domain.SearchQuery, after *cursorKey) ([]domain.SearchHit, error) {
	var b strings.Builder
	args := []any{q.Practice}
	b.WriteString(`SELECT ` + patientCols + ` FROM patients WHERE practice = ?`)
	if !q.IncludeIneligible {
		b.WriteString(` AND has_portal_account AND chat_opt_in`)
	}
	if after != nil {
		b.WriteString(` AND (name_key, id) > (?, ?)`)
		args = append(args, after.nameKey, after.id)
	}
	b.WriteString(` ORDER BY name_key, id LIMIT ?`)
	args = append(args, q.Limit)
	rows, err := s.db.Query(ctx, b.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("list patients: %w", err)
	}
	defer rows.Close()
	var out []domain.SearchHit
	for rows.Next() {
		p, err := scanPatient(q.Practice, rows)
		if err != nil {
			return nil, fmt.Errorf("list patients: %w", err)
		}
		out = append(out, domain.SearchHit{Patient: *p})
	}
	return out, rows.Err()
}

// plan says which streams make up each tier.
//
// Tier 1 is the rank 1 rows of its driving word, the word with the fewest
// whole-word rows, with every other word whole.
//
// Tier 2 is split by the first query word that is only a prefix in the name:
// S_i holds the names where words[i] is only a prefix, every earlier word is
// whole and every later word a prefix. The S_i are disjoint, and each is
// read from the word that promises the fewest rows: words[i]'s own rank 2
// rows, or another word's rows of the ranks S_i allows it.
type plan struct {
	// tier1 is the driving word of tier 1, -1 when tier 1 is empty.
	tier1 int
	// tier2 has one entry per S_i that can have rows.
	tier2 []partialSet
}

// partialSet is S_i read from words[drive].
type partialSet struct {
	i, drive int
}

// plan reads, per query word, how many patients have it as a whole word and
// only as a prefix (prefix_counts), and picks the streams.
func (s *Store) plan(ctx context.Context, practice string, words []string) (plan, error) {
	if len(words) == 1 {
		return plan{tier1: 0, tier2: []partialSet{{0, 0}}}, nil
	}
	args := make([]any, 0, len(words)+1)
	args = append(args, practice)
	for _, w := range words {
		args = append(args, w)
	}
	rows, err := s.db.Query(ctx, `SELECT prefix, whole, partial FROM prefix_counts WHERE practice = ? AND prefix IN (?`+
		strings.Repeat(`, ?`, len(words)-1)+`)`, args...)
	if err != nil {
		return plan{}, fmt.Errorf("count search words: %w", err)
	}
	defer rows.Close()
	byPrefix := map[string][2]int64{}
	for rows.Next() {
		var p string
		var c [2]int64
		if err := rows.Scan(&p, &c[0], &c[1]); err != nil {
			return plan{}, fmt.Errorf("count search words: %w", err)
		}
		byPrefix[p] = c
	}
	if err := rows.Err(); err != nil {
		return plan{}, fmt.Errorf("count search words: %w", err)
	}
	counts := make([]int64, 2*len(words))
	for i, w := range words {
		counts[2*i], counts[2*i+1] = byPrefix[w][0], byPrefix[w][1]
	}
	whole := func(i int) int64 { return counts[2*i] }
	partial := func(i int) int64 { return counts[2*i+1] }
	// better prefers fewer rows, then the longer word.
	better := func(c int64, i int, bestC int64, best int) bool {
		return best < 0 || c < bestC || (c == bestC && len(words[i]) > len(words[best]))
	}
	pl := plan{tier1: -1}
	var bestC int64
	for i := range words {
		if whole(i) == 0 {
			pl.tier1 = -1
			break
		}
		if better(whole(i), i, bestC, pl.tier1) {
			pl.tier1, bestC = i, whole(i)
		}
	}
	for i := range words {
		if partial(i) == 0 {
			continue // words[i] is nowhere only a prefix
		}
		possible := true
		for j := 0; j < i; j++ {
			possible = possible && whole(j) > 0
		}
		if !possible {
			continue
		}
		drive, cost := i, partial(i)
		for j := range words {
			c := whole(j)
			if j > i {
				c += partial(j)
			}
			if j != i && (c < cost || (c == cost && len(words[j]) > len(words[drive]))) {
				drive, cost = j, c
			}
		}
		pl.tier2 = append(pl.tier2, partialSet{i: i, drive: drive})
	}
	return pl, nil
}

// searchSQL builds the one statement of a search page.
type searchSQL struct {
	practice     string
	limit        int
	after        *cursorKey
	eligibleOnly bool
	// contains is the dialect's substring test of search_text with one
	// argument: instr (SQLite) or strpos (PostgreSQL), both faster than LIKE
	// '%…%'.
	contains string

	b    strings.Builder
	args []any
	n    int // streams written
}

// build returns the statement and its arguments for tiers from..to of the
// query words with plan, or "" when those tiers can have no rows.
func (s *searchSQL) build(words []string, pl plan, from, to int) (string, []any) {
	qkey := strings.Join(words, " ")
	s.b.WriteString(`SELECT ` + prefixed("p") + `, s.tier FROM (`)
	want := func(tier int) bool { return from <= tier && tier <= to && s.open(tier) }
	// Tier 0: the whole name.
	if want(0) {
		s.b.WriteString(`SELECT 0 AS tier, name_key, id AS patient_id FROM patients WHERE practice = ? AND name_key = ?`)
		s.args = append(s.args, s.practice, qkey)
		if s.eligibleOnly {
			s.b.WriteString(` AND has_portal_account AND chat_opt_in`)
		}
		s.close(0, "")
	}
	// Tier 1: every word whole, not the whole name.
	if pl.tier1 >= 0 && want(1) {
		conds := make([]wordCond, len(words))
		for j := range conds {
			conds[j] = condWhole
		}
		s.stream(1, words, pl.tier1, rankWholeWord, conds, qkey)
	}
	// Tier 2: some word only a prefix (S_i for each i).
	for _, ps := range pl.tier2 {
		conds := make([]wordCond, len(words))
		for j := range conds {
			switch {
			case j < ps.i:
				conds[j] = condWhole
			case j == ps.i:
				conds[j] = condPartial
			default:
				conds[j] = condPrefix
			}
		}
		var ranks []int
		switch conds[ps.drive] {
		case condPartial:
			ranks = []int{rankPrefix}
		case condWhole:
			ranks = []int{rankWholeWord, rankWholeName}
		default:
			ranks = []int{rankPrefix, rankWholeWord, rankWholeName}
		}
		for _, r := range ranks {
			if want(2) {
				s.stream(2, words, ps.drive, r, conds, "")
			}
		}
	}
	if s.n == 0 {
		return "", nil
	}
	s.b.WriteString(`) s JOIN patients p ON p.practice = ? AND p.id = s.patient_id ORDER BY s.tier, s.name_key, s.patient_id LIMIT ?`)
	s.args = append(s.args, s.practice, s.limit)
	return s.b.String(), s.args
}

// open starts a stream of tier unless the cursor is past it.
func (s *searchSQL) open(tier int) bool {
	if s.after != nil && s.after.tier > tier {
		return false
	}
	if s.n > 0 {
		s.b.WriteString(` UNION ALL `)
	}
	s.n++
	s.b.WriteString(`SELECT * FROM (`)
	return true
}

// close ends a stream: the cursor condition, order and limit. col is the
// column alias prefix ("" or "x.").
func (s *searchSQL) close(tier int, col string) {
	idCol := col + "patient_id"
	if col == "" {
		idCol = "id"
	}
	if s.after != nil && s.after.tier == tier {
		fmt.Fprintf(&s.b, ` AND (%sname_key, %s) > (?, ?)`, col, idCol)
		s.args = append(s.args, s.after.nameKey, s.after.id)
	}
	fmt.Fprintf(&s.b, ` ORDER BY %sname_key, %s LIMIT ?) t%d`, col, idCol, s.n)
	s.args = append(s.args, s.limit)
}

// wordCond is what a stream asks of one query word.
type wordCond int

const (
	condPrefix  wordCond = iota // starts a word of the name
	condWhole                   // is a word of the name
	condPartial                 // starts a word of the name but is none
)

// stream writes the rows of words[drive] with rank, in name order, where every
// other word meets its condition; with qkey set, not the whole name.
func (s *searchSQL) stream(tier int, words []string, drive, rank int, conds []wordCond, qkey string) {
	fmt.Fprintf(&s.b, `SELECT %d AS tier, x.name_key, x.patient_id FROM patient_prefixes x`, tier)
	s.b.WriteString(` WHERE x.practice = ? AND x.prefix = ? AND x.rank = ?`)
	s.args = append(s.args, s.practice, words[drive], rank)
	if s.eligibleOnly {
		s.b.WriteString(` AND x.eligible`)
	}
	for j, w := range words {
		if j == drive {
			continue
		}
		switch conds[j] {
		case condPrefix:
			fmt.Fprintf(&s.b, ` AND %s > 0`, s.contains)
			s.args = append(s.args, " "+w)
		case condWhole:
			fmt.Fprintf(&s.b, ` AND %s > 0`, s.contains)
			s.args = append(s.args, " "+w+" ")
		case condPartial:
			fmt.Fprintf(&s.b, ` AND %s > 0 AND %s = 0`, s.contains, s.contains)
			s.args = append(s.args, " "+w, " "+w+" ")
		}
	}
	if qkey != "" {
		s.b.WriteString(` AND x.name_key <> ?`)
		s.args = append(s.args, qkey)
	}
	s.close(tier, "x.")
}
