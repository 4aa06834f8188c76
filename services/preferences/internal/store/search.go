package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/clinicchat/clinicchat/services/preferences/internal/domain"
)

// Search plan (see BENCHMARKS.md for the measurements behind it).
//
// patient_prefixes holds one row per prefix of every indexed word of a name,
// keyed (practice, prefix, rank, name_key, patient_id). For one query word d,
// "prefix = d AND rank = r" is an index range already in name order, so the
// first page of any tier is read straight off the index and the scan stops
// as soon as the page is full, however many patients match. With several
// query words, the store drives from the one with the fewest rows (a capped
// count) and checks the other words on the same index row (search_text
// LIKE), so no other table is touched until the page is known.
//
// Each tier is one or more of these ordered streams, each limited to the page
// size; one statement UNIONs them, and the database merges at most a few
// pages of rows:
//
//	tier 0 (whole name): patients WHERE name_key = query key
//	tier 1 (whole words): rank 1 rows of d whose search_text has every other
//	                      word whole (name_key <> query key)
//	tier 2 (prefixes):    rank 2 rows of d, plus rank 0/1 rows of d where
//	                      some other word is only a prefix, each with every
//	                      other word as a prefix (name_key <> query key)
//
// Without query words, patients are listed by name from patients_by_name (or
// its partial twin with the eligible only).

// countCap bounds the row counts that pick the driving words: past it a
// word is "common" and the longest common word drives.
const countCap = 1000

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
	sb := searchSQL{practice: q.Practice, limit: q.Limit, after: after, eligibleOnly: !q.IncludeIneligible}
	query, args := sb.build(q.Words, pl)
	rows, err := s.db.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("search patients: %w", err)
	}
	defer rows.Close()
	var out []domain.SearchHit
	for rows.Next() {
		var tier int
		p, err := scanPatient(q.Practice, rows, &tier)
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

// plan says which word drives each tier and which streams can have rows.
type plan struct {
	d1, d2 int // driving words of tiers 1 and 2
	// wholeOK: every word is a whole word of some name (else tier 1 is empty).
	wholeOK bool
	// partialOK: some word other than words[d2] is somewhere only a prefix
	// (else tier 2 has no rows where words[d2] is whole).
	partialOK bool
}

// plan picks the driving word of each tier by counting, per query word, its
// prefix rows (tier 2) and its whole-word rows (tier 1), each up to countCap;
// the fewest rows drive (ties: the longer word). It also finds the streams
// that cannot have rows, which would otherwise scan every row of their word.
func (s *Store) plan(ctx context.Context, practice string, words []string) (plan, error) {
	if len(words) == 1 {
		return plan{wholeOK: true}, nil
	}
	var b strings.Builder
	args := make([]any, 0, 4*len(words))
	b.WriteString(`SELECT `)
	for i, w := range words {
		if i > 0 {
			b.WriteString(`, `)
		}
		fmt.Fprintf(&b, `(SELECT COUNT(*) FROM (SELECT 1 FROM patient_prefixes WHERE practice = ? AND prefix = ? LIMIT %d) a%d), `, countCap, i)
		fmt.Fprintf(&b, `(SELECT COUNT(*) FROM (SELECT 1 FROM patient_prefixes WHERE practice = ? AND prefix = ? AND rank <= %d LIMIT %d) w%d), `, rankWholeWord, countCap, i)
		fmt.Fprintf(&b, `(SELECT COUNT(*) FROM (SELECT 1 FROM patient_prefixes WHERE practice = ? AND prefix = ? AND rank = %d LIMIT 1) p%d)`, rankPrefix, i)
		args = append(args, practice, w, practice, w, practice, w)
	}
	counts := make([]int64, 3*len(words))
	dest := make([]any, len(counts))
	for i := range counts {
		dest[i] = &counts[i]
	}
	if err := s.db.QueryRow(ctx, b.String(), args...).Scan(dest...); err != nil {
		return plan{}, fmt.Errorf("count search words: %w", err)
	}
	pick := func(off int) int {
		best := 0
		for i := 1; i < len(words); i++ {
			c, cb := counts[3*i+off], counts[3*best+off]
			if c < cb || (c == cb && len(words[i]) > len(words[best])) {
				best = i
			}
		}
		return best
	}
	pl := plan{d1: pick(1), d2: pick(0), wholeOK: true}
	for i := range words {
		if counts[3*i+1] == 0 {
			pl.wholeOK = false
		}
		if i != pl.d2 && counts[3*i+2] > 0 {
			pl.partialOK = true
		}
	}
	return pl, nil
}

// searchSQL builds the one statement of a search page.
type searchSQL struct {
	practice     string
	limit        int
	after        *cursorKey
	eligibleOnly bool

	b    strings.Builder
	args []any
	n    int // streams written
}

// build returns the statement and its arguments for query words and plan.
func (s *searchSQL) build(words []string, pl plan) (string, []any) {
	split := func(drive int) (string, []string) {
		var others []string
		for i, w := range words {
			if i != drive {
				others = append(others, w)
			}
		}
		return words[drive], others
	}
	qkey := strings.Join(words, " ")
	s.b.WriteString(`SELECT ` + prefixed("p") + `, s.tier FROM (`)
	// Tier 0: the whole name.
	if s.open(0) {
		s.b.WriteString(`SELECT 0 AS tier, name_key, id AS patient_id FROM patients WHERE practice = ? AND name_key = ?`)
		s.args = append(s.args, s.practice, qkey)
		if s.eligibleOnly {
			s.b.WriteString(` AND has_portal_account AND chat_opt_in`)
		}
		s.close(0, "")
	}
	// Tier 1: every word whole.
	if pl.wholeOK && s.open(1) {
		d, others := split(pl.d1)
		s.stream(1, d, rankWholeWord, qkey, others, true, false)
	}
	// Tier 2: the rest.
	d, others := split(pl.d2)
	if s.open(2) {
		s.stream(2, d, rankPrefix, qkey, others, false, false)
		if pl.partialOK {
			if s.open(2) {
				s.stream(2, d, rankWholeWord, qkey, others, false, true)
			}
			if s.open(2) {
				s.stream(2, d, rankWholeName, qkey, others, false, true)
			}
		}
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

// stream writes the rows of d with rank, in name order: with every other word
// whole (allWhole), or with every other word a prefix and, when notAllWhole,
// not every one whole.
func (s *searchSQL) stream(tier int, d string, rank int, qkey string, others []string, allWhole, notAllWhole bool) {
	fmt.Fprintf(&s.b, `SELECT %d AS tier, x.name_key, x.patient_id FROM patient_prefixes x`, tier)
	if s.eligibleOnly {
		s.b.WriteString(` JOIN patients e ON e.practice = x.practice AND e.id = x.patient_id AND e.has_portal_account AND e.chat_opt_in`)
	}
	s.b.WriteString(` WHERE x.practice = ? AND x.prefix = ? AND x.rank = ?`)
	s.args = append(s.args, s.practice, d, rank)
	for _, w := range others {
		if allWhole {
			s.b.WriteString(` AND x.search_text LIKE ?`)
			s.args = append(s.args, "% "+w+" %")
		} else {
			s.b.WriteString(` AND x.search_text LIKE ?`)
			s.args = append(s.args, "% "+w+"%")
		}
	}
	if notAllWhole {
		s.b.WriteString(` AND NOT (`)
		for i, w := range others {
			if i > 0 {
				s.b.WriteString(` AND `)
			}
			s.b.WriteString(`x.search_text LIKE ?`)
			s.args = append(s.args, "% "+w+" %")
		}
		s.b.WriteString(`)`)
	}
	if rank != rankPrefix || len(others) > 0 {
		s.b.WriteString(` AND x.name_key <> ?`)
		s.args = append(s.args, qkey)
	}
	s.close(tier, "x.")
}
