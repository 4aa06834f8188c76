// Package store is the preferences service's repository on SQLite or
// PostgreSQL (one portable implementation over sqldb): the patients table,
// the patient_prefixes search index kept in step with it in the same
// transaction, and the outbox.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/preferences/internal/domain"
)

// Store implements domain.Repository.
type Store struct {
	db *sqldb.DB
	// cache answers GetPatient without a database read where this process
	// is the only writer (SQLite); nil on PostgreSQL.
	cache *patientCache
}

var _ domain.Repository = (*Store)(nil)

// New migrates db and returns the store.
func New(ctx context.Context, db *sqldb.DB) (*Store, error) {
	if err := sqldb.Migrate(ctx, db, migrationsFS, "migrations"); err != nil {
		return nil, err
	}
	st := &Store{db: db}
	if db.Dialect() == sqldb.SQLite {
		st.cache = newPatientCache()
	}
	return st, nil
}

const patientCols = `id, external_id, display_name, date_of_birth, has_portal_account, chat_opt_in, update_time, prefs_update_time`

// prefixed returns patientCols qualified by alias.
func prefixed(alias string) string {
	cols := strings.Split(patientCols, ", ")
	for i, c := range cols {
		cols[i] = alias + "." + c
	}
	return strings.Join(cols, ", ")
}

func scanPatient(practice string, row interface{ Scan(...any) error }, extra ...any) (*domain.Patient, error) {
	p := domain.Patient{Practice: practice}
	var upd, prefs int64
	dest := append([]any{&p.ID, &p.ExternalID, &p.DisplayName, &p.DateOfBirth, &p.HasPortalAccount, &p.ChatOptIn, &upd, &prefs}, extra...)
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	p.UpdateTime = sqldb.FromMicros(upd)
	p.PrefsUpdateTime = sqldb.FromMicros(prefs)
	return &p, nil
}

// forUpdate locks the row read in a write transaction on PostgreSQL (SQLite
// has a single writer).
func forUpdate(q sqldb.Querier) string {
	if q.Dialect() == sqldb.Postgres {
		return " FOR UPDATE"
	}
	return ""
}

func getPatient(ctx context.Context, q sqldb.Querier, practice, where string, arg string) (*domain.Patient, error) {
	p, err := scanPatient(practice, q.QueryRow(ctx,
		`SELECT `+patientCols+` FROM patients WHERE practice = ? AND `+where+` = ?`+forUpdate(q), practice, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read patient: %w", err)
	}
	return p, nil
}

// GetPatient implements domain.Repository: from the cache when there is one
// (patientCache: exact), else one read of the primary key.
func (s *Store) GetPatient(ctx context.Context, practice, id string) (*domain.Patient, error) {
	var gen uint64
	k := patientKey{practice, id}
	if s.cache != nil {
		p, ok, g := s.cache.get(k)
		if ok {
			return &p, nil
		}
		gen = g
	}
	p, err := scanPatient(practice, s.db.QueryRow(ctx,
		`SELECT `+patientCols+` FROM patients WHERE practice = ? AND id = ?`, practice, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, domain.ErrPatientNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read patient: %w", err)
	}
	if s.cache != nil {
		s.cache.fill(k, *p, gen)
	}
	return p, nil
}

// writing brackets a write of patients with the cache (patientCache.begin);
// the returned function ends it with the patient written (nil: unknown) and
// the write's error.
func (s *Store) writing(practice, id string) func(written *domain.Patient, err error) {
	if s.cache == nil {
		return func(*domain.Patient, error) {}
	}
	var k *patientKey
	if id != "" {
		k = &patientKey{practice, id}
	}
	s.cache.begin(k)
	return func(written *domain.Patient, err error) {
		switch {
		case k != nil:
			s.cache.end(k, false) // only this patient can have changed
		case err == nil && written != nil:
			s.cache.end(&patientKey{practice, written.ID}, false)
		default:
			s.cache.end(nil, true)
		}
	}
}

// UpsertPatient implements domain.Repository. On PostgreSQL two concurrent
// creates of one external id collide on the unique key; the loser runs
// again and finds the winner's row.
func (s *Store) UpsertPatient(ctx context.Context, practice string, key domain.PatientKey, mutate domain.Mutation) (out *domain.Patient, err error) {
	done := s.writing(practice, key.ID)
	defer func() { done(out, err) }()
	for attempt := 0; attempt < 3; attempt++ {
		err = s.db.Write(ctx, func(tx *sqldb.Tx) error {
			var cur *domain.Patient
			var err error
			if key.ID != "" {
				cur, err = getPatient(ctx, tx, practice, "id", key.ID)
			} else {
				cur, err = getPatient(ctx, tx, practice, "external_id", key.ExternalID)
			}
			if err != nil {
				return err
			}
			out, err = s.apply(ctx, tx, cur, mutate)
			if key.ID == "" && cur == nil && errors.Is(err, domain.ErrExternalIDInUse) {
				// Found by external id after all: another create of it
				// committed since our read. Run again to update that one.
				return errConcurrentCreate
			}
			return err
		})
		if !sqldb.IsUniqueViolation(err) && !errors.Is(err, errConcurrentCreate) {
			break
		}
	}
	if sqldb.IsUniqueViolation(err) || errors.Is(err, errConcurrentCreate) {
		return nil, domain.ErrExternalIDInUse
	}
	return out, err
}

// errConcurrentCreate makes UpsertPatient run again.
var errConcurrentCreate = errors.New("concurrent create of the same external id")

// UpdatePatient implements domain.Repository.
func (s *Store) UpdatePatient(ctx context.Context, practice, id string, mutate domain.Mutation) (out *domain.Patient, err error) {
	done := s.writing(practice, id)
	defer func() { done(out, err) }()
	err = s.db.Write(ctx, func(tx *sqldb.Tx) error {
		cur, err := getPatient(ctx, tx, practice, "id", id)
		if err != nil {
			return err
		}
		if cur == nil {
			return domain.ErrPatientNotFound
		}
		out, err = s.apply(ctx, tx, cur, mutate)
		return err
	})
	return out, err
}

// apply runs mutate on cur and writes the result, its search rows and its
// events. It returns the patient as stored (cur when nothing changed).
func (s *Store) apply(ctx context.Context, tx *sqldb.Tx, cur *domain.Patient, mutate domain.Mutation) (*domain.Patient, error) {
	next, events, err := mutate(cur)
	if err != nil {
		return nil, err
	}
	if next == nil {
		if cur == nil {
			return nil, domain.ErrPatientNotFound
		}
		return cur, nil
	}
	if cur == nil || cur.ExternalID != next.ExternalID {
		var other string
		err := tx.QueryRow(ctx, `SELECT id FROM patients WHERE practice = ? AND external_id = ?`, next.Practice, next.ExternalID).Scan(&other)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return nil, fmt.Errorf("check external id: %w", err)
		case other != next.ID:
			return nil, domain.ErrExternalIDInUse
		}
	}
	if cur == nil {
		if err := insertPatients(ctx, tx, []domain.Patient{*next}); err != nil {
			return nil, err
		}
	} else {
		if err := updatePatient(ctx, tx, cur, next); err != nil {
			return nil, err
		}
	}
	if err := outbox.AddAll(ctx, tx, events); err != nil {
		return nil, err
	}
	return next, nil
}

func updatePatient(ctx context.Context, tx *sqldb.Tx, cur, next *domain.Patient) error {
	newKeys := deriveSearch(next.DisplayName)
	_, err := tx.Exec(ctx, `UPDATE patients SET external_id = ?, display_name = ?, name_key = ?, date_of_birth = ?,
		has_portal_account = ?, chat_opt_in = ?, update_time = ?, prefs_update_time = ? WHERE practice = ? AND id = ?`,
		next.ExternalID, next.DisplayName, newKeys.nameKey, next.DateOfBirth, next.HasPortalAccount, next.ChatOptIn,
		sqldb.Micros(next.UpdateTime), sqldb.Micros(next.PrefsUpdateTime), cur.Practice, cur.ID)
	if err != nil {
		return fmt.Errorf("update patient: %w", err)
	}
	oldKeys := deriveSearch(cur.DisplayName)
	if oldKeys.nameKey != newKeys.nameKey || oldKeys.searchText != newKeys.searchText {
		if err := byPrefixKeys(ctx, tx, `DELETE FROM patient_prefixes`, nil, cur.Practice, cur.ID, oldKeys); err != nil {
			return fmt.Errorf("delete search rows: %w", err)
		}
		if err := addCounts(ctx, tx, cur.Practice, []searchRow{oldKeys}, -1); err != nil {
			return err
		}
		return insertPrefixes(ctx, tx, []domain.Patient{*next}, []searchRow{newKeys})
	}
	if eligible(cur) != eligible(next) {
		if err := byPrefixKeys(ctx, tx, `UPDATE patient_prefixes SET eligible = ?`, []any{eligible(next)}, cur.Practice, cur.ID, oldKeys); err != nil {
			return fmt.Errorf("update search rows: %w", err)
		}
	}
	return nil
}

// eligible is the eligible column of p's search rows.
func eligible(p *domain.Patient) bool {
	ok, _ := p.Eligibility()
	return ok
}

// byPrefixKeys runs stmt (DELETE or UPDATE … SET, with its own args first)
// on a patient's search rows, found by their full keys: one statement per
// rank, each an IN list on prefix.
func byPrefixKeys(ctx context.Context, tx *sqldb.Tx, stmt string, stmtArgs []any, practice, id string, keys searchRow) error {
	byRank := map[int][]any{}
	for _, p := range keys.prefixes {
		byRank[p.rank] = append(byRank[p.rank], p.prefix)
	}
	for rank, prefixes := range byRank {
		args := append(append(append([]any{}, stmtArgs...), practice, rank, keys.nameKey, id), prefixes...)
		q := stmt + ` WHERE practice = ? AND rank = ? AND name_key = ? AND patient_id = ? AND prefix IN (?` +
			strings.Repeat(`, ?`, len(prefixes)-1) + `)`
		if _, err := tx.Exec(ctx, q, args...); err != nil {
			return err
		}
	}
	return nil
}

// insertPatients inserts new patients and their search rows with multi-row
// statements.
func insertPatients(ctx context.Context, tx *sqldb.Tx, ps []domain.Patient) error {
	const cols = 10
	keys := make([]searchRow, len(ps))
	for i := range ps {
		keys[i] = deriveSearch(ps[i].DisplayName)
	}
	for start := 0; start < len(ps); start += maxRowsPerInsert(cols) {
		part := ps[start:min(start+maxRowsPerInsert(cols), len(ps))]
		var b strings.Builder
		b.WriteString(`INSERT INTO patients (practice, id, external_id, display_name, name_key, date_of_birth,
			has_portal_account, chat_opt_in, update_time, prefs_update_time) VALUES `)
		args := make([]any, 0, len(part)*cols)
		for i, p := range part {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(`(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
			args = append(args, p.Practice, p.ID, p.ExternalID, p.DisplayName, keys[start+i].nameKey, p.DateOfBirth,
				p.HasPortalAccount, p.ChatOptIn, sqldb.Micros(p.UpdateTime), sqldb.Micros(p.PrefsUpdateTime))
		}
		if _, err := tx.Exec(ctx, b.String(), args...); err != nil {
			return fmt.Errorf("insert patients: %w", err)
		}
	}
	return insertPrefixes(ctx, tx, ps, keys)
}

// addCounts adds sign (+1 or -1) per patient to prefix_counts for the
// search rows in keys, all of practice. Rows go in prefix order in one
// statement per chunk, so concurrent writers lock counters in the same order.
func addCounts(ctx context.Context, tx *sqldb.Tx, practice string, keys []searchRow, sign int64) error {
	type delta struct{ whole, partial int64 }
	sum := map[string]*delta{}
	for _, k := range keys {
		for _, p := range k.prefixes {
			d := sum[p.prefix]
			if d == nil {
				d = &delta{}
				sum[p.prefix] = d
			}
			if p.rank == rankPrefix {
				d.partial += sign
			} else {
				d.whole += sign
			}
		}
	}
	prefixes := make([]string, 0, len(sum))
	for p := range sum {
		prefixes = append(prefixes, p)
	}
	slices.Sort(prefixes)
	const cols = 4
	for start := 0; start < len(prefixes); start += maxRowsPerInsert(cols) {
		part := prefixes[start:min(start+maxRowsPerInsert(cols), len(prefixes))]
		var b strings.Builder
		args := make([]any, 0, len(part)*cols)
		b.WriteString(`INSERT INTO prefix_counts (practice, prefix, whole, partial) VALUES `)
		for i, p := range part {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(`(?, ?, ?, ?)`)
			args = append(args, practice, p, sum[p].whole, sum[p].partial)
		}
		b.WriteString(` ON CONFLICT (practice, prefix) DO UPDATE SET whole = prefix_counts.whole + excluded.whole,
			partial = prefix_counts.partial + excluded.partial`)
		if _, err := tx.Exec(ctx, b.String(), args...); err != nil {
			return fmt.Errorf("count search rows: %w", err)
		}
	}
	return nil
}

// insertPrefixes inserts the search rows of patients (keys[i] for ps[i]) and
// counts them.
func insertPrefixes(ctx context.Context, tx *sqldb.Tx, ps []domain.Patient, keys []searchRow) error {
	byPractice := map[string][]searchRow{}
	for i := range ps {
		byPractice[ps[i].Practice] = append(byPractice[ps[i].Practice], keys[i])
	}
	for practice, ks := range byPractice {
		if err := addCounts(ctx, tx, practice, ks, 1); err != nil {
			return err
		}
	}
	const cols = 7
	per := maxRowsPerInsert(cols)
	var b strings.Builder
	args := make([]any, 0, per*cols)
	n := 0
	flush := func() error {
		if n == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, b.String(), args...); err != nil {
			return fmt.Errorf("insert search rows: %w", err)
		}
		b.Reset()
		args, n = args[:0], 0
		return nil
	}
	for i := range ps {
		p := &ps[i]
		for _, pr := range keys[i].prefixes {
			if n == 0 {
				b.WriteString(`INSERT INTO patient_prefixes (practice, prefix, rank, name_key, patient_id, search_text, eligible) VALUES `)
			} else {
				b.WriteString(", ")
			}
			b.WriteString(`(?, ?, ?, ?, ?, ?, ?)`)
			args = append(args, p.Practice, pr.prefix, pr.rank, keys[i].nameKey, p.ID, keys[i].searchText, eligible(&ps[i]))
			if n++; n == per {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	return flush()
}

// maxRowsPerInsert keeps a multi-row INSERT under both backends' limits on
// bound parameters (SQLite 32766, PostgreSQL 65535).
func maxRowsPerInsert(cols int) int { return 30000 / cols }

// RecordEvents implements domain.Repository.
func (s *Store) RecordEvents(ctx context.Context, events ...domain.Event) error {
	if len(events) == 0 {
		return nil
	}
	return s.db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, events) })
}
