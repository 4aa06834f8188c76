// Package store keeps the audit logs in SQLite or PostgreSQL (one SQL text,
// rebound per dialect by sqldb): records, the tlog stored hashes of each
// practice's Merkle tree, and signed checkpoints. The migrations install
// triggers that refuse every UPDATE and DELETE of those tables.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

//go:embed migrations
var migrations embed.FS

// appendLockClass is the first key of the PostgreSQL advisory lock that
// serializes appends to one practice's log across replicas (the second key is
// a hash of the practice id).
const appendLockClass = 7342002

// Store implements domain.Repository.
type Store struct {
	db *sqldb.DB
}

var _ domain.Repository = (*Store)(nil)

// New migrates db and returns the store.
func New(ctx context.Context, db *sqldb.DB) (*Store, error) {
	if err := sqldb.Migrate(ctx, db, migrations, "migrations"); err != nil {
		return nil, err
	}
	return &Store{db: db}, nil
}

const recordCols = `practice, idx, event_id, time_us, actor, actor_role, action, resource, outcome, detail, leaf_hash`

type scanner interface{ Scan(dest ...any) error }

func scanRecord(s scanner) (domain.Record, error) {
	var r domain.Record
	var us int64
	var outcome string
	var hash []byte
	if err := s.Scan(&r.Practice, &r.Index, &r.EventID, &us, &r.Actor, &r.ActorRole, &r.Action,
		&r.Resource, &outcome, &r.Detail, &hash); err != nil {
		return domain.Record{}, err
	}
	r.Time = time.UnixMicro(us).UTC() // not sqldb.FromMicros: 0 must stay the epoch, as hashed
	r.Outcome = domain.Outcome(outcome)
	copy(r.Hash[:], hash) // a wrong length leaves a hash that cannot match
	return r, nil
}

// Append implements domain.Repository.
func (s *Store) Append(ctx context.Context, e domain.Entry) (domain.Record, bool, error) {
	recs, added, err := s.AppendAll(ctx, []domain.Entry{e})
	if err != nil {
		return domain.Record{}, false, err
	}
	return recs[0], added[0], nil
}

// AppendAll implements domain.Repository: every entry in one transaction
// (one durable commit for a batch of events), in the order given.
func (s *Store) AppendAll(ctx context.Context, es []domain.Entry) ([]domain.Record, []bool, error) {
	if len(es) == 0 {
		return nil, nil, nil
	}
	es = slices.Clone(es)
	for i := range es {
		es[i] = es[i].Normalize()
	}
	recs := make([]domain.Record, len(es))
	added := make([]bool, len(es))
	err := s.db.Write(ctx, func(tx *sqldb.Tx) error {
		clear(added)
		if tx.Dialect() == sqldb.Postgres {
			// Appends to one practice are serialized: each takes the next
			// index. The locks of a batch are taken up front in one order, so
			// two batches over the same practices cannot deadlock.
			practices := make([]string, 0, 1)
			for _, e := range es {
				practices = append(practices, e.Practice)
			}
			slices.Sort(practices)
			for _, p := range slices.Compact(practices) {
				if _, err := tx.Exec(ctx, fmt.Sprintf(`SELECT pg_advisory_xact_lock(%d, hashtext(?))`, appendLockClass), p); err != nil {
					return fmt.Errorf("lock practice log: %w", err)
				}
			}
		}
		known, err := recordsByEventID(ctx, tx, es)
		if err != nil {
			return err
		}
		b := newAppendBatch(len(es))
		for i, e := range es {
			if r, ok := known[e.EventID]; ok {
				recs[i] = r // already in the log, or earlier in this batch
				continue
			}
			if recs[i], err = appendTx(ctx, tx, e, b); err != nil {
				return err
			}
			added[i] = true
			known[e.EventID] = recs[i]
		}
		return b.insert(ctx, tx)
	})
	if err != nil {
		return nil, nil, err
	}
	return recs, added, nil
}

// recordsByEventID are the records already in the log for es's event ids,
// read in one query per eventLookupChunk ids.
func recordsByEventID(ctx context.Context, tx *sqldb.Tx, es []domain.Entry) (map[string]domain.Record, error) {
	known := make(map[string]domain.Record, len(es))
	for chunk := range slices.Chunk(es, eventLookupChunk) {
		args := make([]any, len(chunk), inListLen(len(chunk)))
		for i, e := range chunk {
			args[i] = e.EventID
		}
		args = padInList(args, 0)
		rows, err := tx.Query(ctx, `SELECT `+recordCols+` FROM audit_events WHERE event_id IN (?`+strings.Repeat(`, ?`, len(args)-1)+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("look up events: %w", err)
		}
		for rows.Next() {
			r, err := scanRecord(rows)
			if err != nil {
				rows.Close()
				return nil, fmt.Errorf("look up events: %w", err)
			}
			known[r.EventID] = r
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("look up events: %w", err)
		}
	}
	return known, nil
}

// eventLookupChunk bounds the parameters of one event id lookup.
const eventLookupChunk = 256

// inListLen is the number of parameters an IN list of n values is given:
// the power of two at or above n. Each statement text is prepared once per
// connection and kept (sqldb's statement caches), so a list of every
// length up to eventLookupChunk made up to 256 statements on the writer,
// several MiB of SQLite's heap outside the Go heap (issue 10); by powers of
// two, 9.
func inListLen(n int) int {
	k := 1
	for k < n {
		k <<= 1
	}
	return k
}

// padInList pads the IN list args[from:] (at least one value) to
// inListLen by repeating its last value, which selects nothing more.
func padInList(args []any, from int) []any {
	last := args[len(args)-1]
	for n := inListLen(len(args) - from); len(args)-from < n; {
		args = append(args, last)
	}
	return args
}

// appendBatch is what one AppendAll transaction appended: each practice's log
// size as the transaction made it (read once; the practice is locked for the
// transaction, so it cannot change under it), and the records and tree
// hashes not inserted yet. They are inserted at the end, a few rows per
// statement, and the tree reads the hashes the batch made from here.
type appendBatch struct {
	sizes    map[string]int64
	hashes   map[string]map[int64]tlog.Hash // practice → stored hash index → hash
	recArgs  []any                          // recordArgs per record
	hashArgs []any                          // practice, index, hash per stored hash

	// The last argument of each repeating column, boxed: a batch's rows
	// mostly repeat one practice, actor, role, action and outcome, and
	// every string put in an argument list (database/sql takes []any) is
	// an allocation of its own.
	practice, actor, role, action, outcome box
	// hashBytes holds the batch's hashes as arguments: appended here,
	// a hash is not an array of its own on the heap.
	hashBytes []byte
}

// box is a string argument and the same string boxed once.
type box struct {
	s string
	v any
}

// of is s boxed, the one boxed before when s is the same.
func (b *box) of(s string) any {
	if b.v == nil || b.s != s {
		b.s, b.v = s, s
	}
	return b.v
}

// hashArg is h as an argument: its bytes in b's hashBytes.
func (b *appendBatch) hashArg(h *tlog.Hash) []byte {
	if cap(b.hashBytes)-len(b.hashBytes) < len(h) {
		b.hashBytes = make([]byte, 0, 32*len(h)) // earlier hashes keep the old array
	}
	i := len(b.hashBytes)
	b.hashBytes = append(b.hashBytes, h[:]...)
	return b.hashBytes[i:len(b.hashBytes):len(b.hashBytes)]
}

// newAppendBatch is a batch for up to n records: their arguments'
// slices made at their size at once (a record stores two tree hashes on
// average: 1 + the trailing ones of its index).
func newAppendBatch(n int) *appendBatch {
	return &appendBatch{sizes: map[string]int64{}, hashes: map[string]map[int64]tlog.Hash{},
		recArgs: make([]any, 0, recordArgs*n), hashArgs: make([]any, 0, 3*2*n), hashBytes: make([]byte, 0, 32*3*n)}
}

// recordArgs is how many arguments a record row takes (recordCols).
const recordArgs = 11

// Rows per INSERT at most: the statements are prepared once per power of two
// up to these (insertRows), so a batch never fills the statement cache.
const (
	maxRecordRows = 64
	maxHashRows   = 128
)

// appendTx appends e, whose event id is not in the log, at its practice's
// next index to b.
func appendTx(ctx context.Context, tx *sqldb.Tx, e domain.Entry, b *appendBatch) (domain.Record, error) {
	n, ok := b.sizes[e.Practice]
	if !ok {
		var last sql.NullInt64
		if err := tx.QueryRow(ctx, `SELECT MAX(idx) FROM audit_events WHERE practice = ?`, e.Practice).Scan(&last); err != nil {
			return domain.Record{}, fmt.Errorf("log size: %w", err)
		}
		if last.Valid {
			n = last.Int64 + 1
		}
	}
	rec := domain.Record{Entry: e, Index: n}
	rec.Hash = rec.LeafHash()
	made := b.hashes[e.Practice]
	if made == nil {
		made = map[int64]tlog.Hash{}
		b.hashes[e.Practice] = made
	}
	hashes, err := tlog.StoredHashesForRecordHash(n, rec.Hash, &hashReader{ctx: ctx, q: tx, practice: e.Practice, made: made})
	if err != nil {
		return domain.Record{}, fmt.Errorf("tree hashes: %w", err)
	}
	practice := b.practice.of(e.Practice)
	b.recArgs = append(b.recArgs, practice, n, e.EventID, e.Time.UnixMicro(), b.actor.of(e.Actor), b.role.of(e.ActorRole),
		b.action.of(e.Action), e.Resource, b.outcome.of(string(e.Outcome)), e.Detail, b.hashArg(&rec.Hash))
	base := tlog.StoredHashIndex(0, n)
	for i := range hashes {
		made[base+int64(i)] = hashes[i]
		b.hashArgs = append(b.hashArgs, practice, base+int64(i), b.hashArg(&hashes[i]))
	}
	b.sizes[e.Practice] = n + 1
	return rec, nil
}

// insert writes b's records and hashes.
func (b *appendBatch) insert(ctx context.Context, tx *sqldb.Tx) error {
	if err := insertRows(ctx, tx, recordInserts, b.recArgs); err != nil {
		return fmt.Errorf("insert records: %w", err)
	}
	if err := insertRows(ctx, tx, hashInserts, b.hashArgs); err != nil {
		return fmt.Errorf("insert tree hashes: %w", err)
	}
	return nil
}

// insertRows inserts the rows of args (cols arguments each) with head, in
// statements of a power of two rows, at most maxRows each. Nothing in the
// transaction reads them after: on PostgreSQL they go with its COMMIT
// (sqldb.Tx.ExecAtCommit), in its last round trip, still under the
// practices' locks.
func insertRows(ctx context.Context, tx *sqldb.Tx, texts *insertTexts, args []any) error {
	for len(args) > 0 {
		k := min(len(args)/texts.cols, texts.maxRows)
		log2 := bits.Len(uint(k)) - 1 // the largest power of two not above k
		k = 1 << log2
		if err := tx.ExecAtCommit(ctx, texts.q[log2], args[:k*texts.cols]...); err != nil {
			return err
		}
		args = args[k*texts.cols:]
	}
	return nil
}

// insertTexts are the statements of an insertRows: q[i] inserts 1<<i rows
// (made once, not per batch).
type insertTexts struct {
	cols, maxRows int
	q             []string
}

func newInsertTexts(head string, cols, maxRows int) *insertTexts {
	t := &insertTexts{cols: cols, maxRows: maxRows}
	row := `(?` + strings.Repeat(`, ?`, cols-1) + `)`
	for k := 1; k <= maxRows; k <<= 1 {
		t.q = append(t.q, head+row+strings.Repeat(`, `+row, k-1))
	}
	return t
}

var (
	recordInserts = newInsertTexts(`INSERT INTO audit_events (`+recordCols+`) VALUES `, recordArgs, maxRecordRows)
	hashInserts   = newInsertTexts(`INSERT INTO audit_hashes (practice, hidx, hash) VALUES `, 3, maxHashRows)
)

// Size implements domain.Repository.
func (s *Store) Size(ctx context.Context, practice string) (int64, error) {
	var last sql.NullInt64
	if err := s.db.QueryRow(ctx, `SELECT MAX(idx) FROM audit_events WHERE practice = ?`, practice).Scan(&last); err != nil {
		return 0, fmt.Errorf("log size: %w", err)
	}
	if !last.Valid {
		return 0, nil
	}
	return last.Int64 + 1, nil
}

// Sizes implements domain.Repository.
func (s *Store) Sizes(ctx context.Context) (map[string]int64, error) {
	rows, err := s.db.Query(ctx, `SELECT practice, MAX(idx) FROM audit_events GROUP BY practice`)
	if err != nil {
		return nil, fmt.Errorf("log sizes: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var p string
		var last int64
		if err := rows.Scan(&p, &last); err != nil {
			return nil, err
		}
		out[p] = last + 1
	}
	return out, rows.Err()
}

// List implements domain.Repository.
func (s *Store) List(ctx context.Context, q domain.ListQuery) ([]domain.Record, error) {
	where := []string{`practice = ?`}
	args := []any{q.Practice}
	for _, c := range q.Filter.Conds {
		switch c.Field {
		case domain.FieldActor:
			where, args = append(where, `actor = ?`), append(args, c.Value)
		case domain.FieldAction:
			where, args = append(where, `action = ?`), append(args, c.Value)
		case domain.FieldOutcome:
			where, args = append(where, `outcome = ?`), append(args, c.Value)
		case domain.FieldResource:
			// The resource itself and everything under it. substr counts
			// characters in both dialects and, unlike LIKE, is case-sensitive
			// in both and needs no escaping.
			prefix := c.Value + "/"
			where = append(where, `(resource = ? OR substr(resource, 1, ?) = ?)`)
			args = append(args, c.Value, utf8.RuneCountInString(prefix), prefix)
		case domain.FieldTime:
			op := map[domain.Op]string{domain.OpGE: ">=", domain.OpGT: ">", domain.OpLE: "<=", domain.OpLT: "<"}[c.Op]
			if op == "" {
				return nil, fmt.Errorf("time filter: operator %q", c.Op)
			}
			where, args = append(where, `time_us `+op+` ?`), append(args, c.Time.UnixMicro())
		default:
			return nil, fmt.Errorf("filter field %q", c.Field)
		}
	}
	order, cmp := `DESC`, `<`
	if q.Ascending {
		order, cmp = `ASC`, `>`
	}
	if q.After != nil {
		where = append(where, `(time_us `+cmp+` ? OR (time_us = ? AND idx `+cmp+` ?))`)
		args = append(args, q.After.TimeMicros, q.After.TimeMicros, q.After.Index)
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 50
	}
	args = append(args, limit)
	rows, err := s.db.Query(ctx, `SELECT `+recordCols+` FROM audit_events WHERE `+strings.Join(where, ` AND `)+
		` ORDER BY time_us `+order+`, idx `+order+` LIMIT ?`, args...)
	if err != nil {
		return nil, fmt.Errorf("list records: %w", err)
	}
	return collect(rows)
}

func collect(rows *sql.Rows) ([]domain.Record, error) {
	defer rows.Close()
	var out []domain.Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Range implements domain.Repository.
func (s *Store) Range(ctx context.Context, practice string, from, to int64) ([]domain.Record, error) {
	rows, err := s.db.Query(ctx, `SELECT `+recordCols+` FROM audit_events WHERE practice = ? AND idx >= ? AND idx < ? ORDER BY idx`,
		practice, from, to)
	if err != nil {
		return nil, fmt.Errorf("read records: %w", err)
	}
	return collect(rows)
}

// LeafHashes implements domain.Repository.
func (s *Store) LeafHashes(ctx context.Context, practice string, from, to int64) ([]tlog.Hash, error) {
	rows, err := s.db.Query(ctx, `SELECT leaf_hash FROM audit_events WHERE practice = ? AND idx >= ? AND idx < ? ORDER BY idx`,
		practice, from, to)
	if err != nil {
		return nil, fmt.Errorf("read leaf hashes: %w", err)
	}
	defer rows.Close()
	out := make([]tlog.Hash, 0, max(0, min(to-from, 1<<16)))
	for rows.Next() {
		var h []byte
		if err := rows.Scan(&h); err != nil {
			return nil, err
		}
		var lh tlog.Hash
		if len(h) != len(lh) {
			return nil, fmt.Errorf("read leaf hashes: a stored leaf hash of %d bytes", len(h))
		}
		copy(lh[:], h)
		out = append(out, lh)
	}
	return out, rows.Err()
}

// StoredHashes implements domain.Repository.
func (s *Store) StoredHashes(ctx context.Context, practice string, from, to int64) ([]domain.StoredHash, error) {
	rows, err := s.db.Query(ctx, `SELECT hidx, hash FROM audit_hashes WHERE practice = ? AND hidx >= ? AND hidx < ? ORDER BY hidx`,
		practice, from, to)
	if err != nil {
		return nil, fmt.Errorf("read tree hashes: %w", err)
	}
	defer rows.Close()
	var out []domain.StoredHash
	for rows.Next() {
		var sh domain.StoredHash
		var h []byte
		if err := rows.Scan(&sh.Index, &h); err != nil {
			return nil, err
		}
		copy(sh.Hash[:], h)
		out = append(out, sh)
	}
	return out, rows.Err()
}

// StoredHashCount implements domain.Repository.
func (s *Store) StoredHashCount(ctx context.Context, practice string) (int64, error) {
	var last sql.NullInt64
	if err := s.db.QueryRow(ctx, `SELECT MAX(hidx) FROM audit_hashes WHERE practice = ?`, practice).Scan(&last); err != nil {
		return 0, fmt.Errorf("tree hash count: %w", err)
	}
	if !last.Valid {
		return 0, nil
	}
	return last.Int64 + 1, nil
}

// HashReader implements domain.Repository.
func (s *Store) HashReader(ctx context.Context, practice string) tlog.HashReader {
	return &hashReader{ctx: ctx, q: s.db, practice: practice}
}

// hashReader reads stored hashes through a DB or a Tx.
type hashReader struct {
	ctx      context.Context
	q        sqldb.Querier
	practice string
	made     map[int64]tlog.Hash // hashes not in storage yet (appendBatch); nil: none
}

// ErrMissingHash means a stored hash that the tree needs is not in storage.
var ErrMissingHash = domain.ErrMissingHash

func (r *hashReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	if len(indexes) == 0 {
		return nil, nil
	}
	got := make(map[int64]tlog.Hash, len(indexes))
	args := make([]any, 0, len(indexes)+1)
	args = append(args, r.practice)
	for _, x := range indexes {
		if h, ok := r.made[x]; ok {
			got[x] = h
		} else {
			args = append(args, x)
		}
	}
	if len(args) > 1 {
		if err := r.read(args, got); err != nil {
			return nil, err
		}
	}
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		h, ok := got[x]
		if !ok {
			return nil, fmt.Errorf("%w: index %d", ErrMissingHash, x)
		}
		out[i] = h
	}
	return out, nil
}

// read adds the stored hashes of args (the practice, then indexes) to got.
func (r *hashReader) read(args []any, got map[int64]tlog.Hash) error {
	args = padInList(args, 1)
	rows, err := r.q.Query(r.ctx, `SELECT hidx, hash FROM audit_hashes WHERE practice = ? AND hidx IN (?`+
		strings.Repeat(`, ?`, len(args)-2)+`)`, args...)
	if err != nil {
		return fmt.Errorf("read tree hashes: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var x int64
		var h []byte
		if err := rows.Scan(&x, &h); err != nil {
			return err
		}
		var hh tlog.Hash
		copy(hh[:], h)
		got[x] = hh
	}
	return rows.Err()
}

const checkpointCols = `practice, tree_size, root_hash, note, created_us`

func scanCheckpoint(s scanner) (domain.Checkpoint, error) {
	var c domain.Checkpoint
	var root []byte
	var us int64
	if err := s.Scan(&c.Practice, &c.Size, &root, &c.Note, &us); err != nil {
		return domain.Checkpoint{}, err
	}
	copy(c.Root[:], root)
	c.Time = sqldb.FromMicros(us)
	return c, nil
}

// SaveCheckpoint implements domain.Repository.
func (s *Store) SaveCheckpoint(ctx context.Context, c domain.Checkpoint) (domain.Checkpoint, error) {
	err := s.db.Write(ctx, func(tx *sqldb.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO audit_checkpoints (`+checkpointCols+`) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (practice, tree_size) DO NOTHING`, c.Practice, c.Size, c.Root[:], c.Note, sqldb.Micros(c.Time))
		return err
	})
	if err != nil {
		return domain.Checkpoint{}, fmt.Errorf("save checkpoint: %w", err)
	}
	stored, err := scanCheckpoint(s.db.QueryRow(ctx, `SELECT `+checkpointCols+` FROM audit_checkpoints WHERE practice = ? AND tree_size = ?`,
		c.Practice, c.Size))
	if err != nil {
		return domain.Checkpoint{}, fmt.Errorf("read checkpoint: %w", err)
	}
	return stored, nil
}

// LatestCheckpoint implements domain.Repository.
func (s *Store) LatestCheckpoint(ctx context.Context, practice string) (domain.Checkpoint, bool, error) {
	c, err := scanCheckpoint(s.db.QueryRow(ctx, `SELECT `+checkpointCols+` FROM audit_checkpoints WHERE practice = ?
		ORDER BY tree_size DESC LIMIT 1`, practice))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return domain.Checkpoint{}, false, nil
	case err != nil:
		return domain.Checkpoint{}, false, fmt.Errorf("latest checkpoint: %w", err)
	}
	return c, true, nil
}

// Checkpoints implements domain.Repository.
func (s *Store) Checkpoints(ctx context.Context, practice string) ([]domain.Checkpoint, error) {
	rows, err := s.db.Query(ctx, `SELECT `+checkpointCols+` FROM audit_checkpoints WHERE practice = ? ORDER BY tree_size`, practice)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: %w", err)
	}
	defer rows.Close()
	var out []domain.Checkpoint
	for rows.Next() {
		c, err := scanCheckpoint(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}
