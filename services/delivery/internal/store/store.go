// Package store is the delivery service's repository on SQLite or PostgreSQL.
package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store/migrations"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// Store implements domain.Repository.
type Store struct {
	db *sqldb.DB
	// receipts is the one slot of the receipt writes in flight (Advance,
	// AdvanceAll, MarkDelivered) on PostgreSQL: see receiptWrite.
	receipts chan struct{}
	// receiptsWaiting counts the receipt writes waiting for the slot (tests).
	receiptsWaiting atomic.Int32
	// sends are the PostgreSQL sends waiting for a write (sendbatch.go).
	sends sendQueue
	// seqs are threads' counters as this process last committed them
	// (knownseqs.go).
	seqs seqCache
}

var _ domain.Repository = (*Store)(nil)

// New migrates db and returns the store.
func New(ctx context.Context, db *sqldb.DB) (*Store, error) {
	if err := sqldb.Migrate(ctx, db, migrations.FS, "."); err != nil {
		return nil, err
	}
	return &Store{db: db, receipts: make(chan struct{}, 1)}, nil
}

// receiptWrite runs write, on PostgreSQL once no other receipt write of
// this store is in flight. A receipt batch locks the messages it changes
// and the marks it raises (receipt_marks) until its transaction commits,
// and on PostgreSQL that transaction is a group-commit lane's (sqldb), shared
// with the sends that joined it. Two receipt batches of one thread and side
// in two lanes at once (the DELIVERED receipts' batch and the read
// consumer's, or two DELIVERED batches when a commit takes longer than the
// marks' window) want the same mark row, or the same new one: the second
// waited for the first lane's whole transaction, and as a joined write gave
// way after the lanes' lock_timeout (50 ms) and ran again alone (~55 times
// per 36,000 messages, BENCHMARKS.md dist14). One at a time, a receipt batch
// never waits for another of this process; the next one gathers the
// receipts that arrive meanwhile (a larger batch, fewer statements). Sends
// take no lock a receipt takes (a receipt reads the thread's last seq
// without locking the counter), so they do not wait for this. Receipts of
// other replicas still wait for each other's locks as before, in one lock
// order (advancePostgres). On SQLite the writer runs one transaction at a
// time anyway, and a DELIVERED batch may join a send's commit, so no slot.
func (s *Store) receiptWrite(ctx context.Context, write func() error) error {
	if s.db.Dialect() != sqldb.Postgres {
		return write()
	}
	select {
	case s.receipts <- struct{}{}:
	default:
		s.receiptsWaiting.Add(1)
		select {
		case s.receipts <- struct{}{}:
			s.receiptsWaiting.Add(-1)
		case <-ctx.Done():
			s.receiptsWaiting.Add(-1)
			return ctx.Err()
		}
	}
	defer func() { <-s.receipts }()
	return write()
}

const columns = `practice, conversation_id, ` + threadColumns

// threadColumns are columns after the thread's key (practice,
// conversation_id): what a statement of one thread, which has the key,
// reads back (advanceSQLite).
const threadColumns = `seq, patient_id, sender, sender_role, from_patient, text, extras, sensitive,
	status, create_time, deliver_time, read_time, read_by, request_id, content_hash, sender_display_name`

type scanner interface{ Scan(...any) error }

// row is the destination of a scan of columns (and, for advancePostgres,
// the receipt's ordinal after them), made once per query: its fields and
// the pointers to them in dest are reused for every row, instead of a
// Message, five temporaries and the argument slice escaping per row.
type row struct {
	m                     domain.Message
	extras                string
	status                int
	create, deliver, read int64
	ord                   int
	dest                  []any
}

// newRow is a row for columns, followed by the ordinal when ord is set.
func newRow(ord bool) *row {
	r := &row{}
	m := &r.m
	r.dest = []any{&m.Practice, &m.ConversationID, &m.Seq, &m.PatientID, &m.Sender, &m.SenderRole, &m.FromPatient, &m.Text,
		&r.extras, &m.Sensitive, &r.status, &r.create, &r.deliver, &r.read, &m.ReadBy, &m.RequestID, &m.ContentHash,
		&m.SenderDisplayName, &r.ord}
	if !ord {
		r.dest = r.dest[:len(r.dest)-1]
	}
	return r
}

// newThreadRow is a row for threadColumns: the thread's key is not
// scanned but set (setThread).
func newThreadRow() *row {
	r := newRow(false)
	r.dest = r.dest[2:]
	return r
}

// setThread sets the key of a newThreadRow's messages.
func (r *row) setThread(practice, id string) { r.m.Practice, r.m.ConversationID = practice, id }

// scan scans the current row of s into a Message.
func (r *row) scan(s scanner) (domain.Message, error) {
	r.m.Extras = domain.Extras{}
	if err := s.Scan(r.dest...); err != nil {
		return domain.Message{}, err
	}
	m := r.m
	// Most messages have neither attachments nor an artifact: "{}".
	if r.extras != "{}" {
		if err := json.Unmarshal([]byte(r.extras), &m.Extras); err != nil {
			return m, fmt.Errorf("decode message extras: %w", err)
		}
	}
	m.Status = domain.Status(r.status)
	m.CreateTime, m.DeliverTime, m.ReadTime = sqldb.FromMicros(r.create), sqldb.FromMicros(r.deliver), sqldb.FromMicros(r.read)
	return m, nil
}

func scan(s scanner) (domain.Message, error) { return newRow(false).scan(s) }

func one(row *sql.Row) (domain.Message, error) {
	m, err := scan(row)
	if errors.Is(err, sql.ErrNoRows) {
		return m, domain.ErrNotFound
	}
	return m, err
}

// FindByRequest implements domain.Repository.
func (s *Store) FindByRequest(ctx context.Context, practice, sender, requestID string) (domain.Message, error) {
	return one(s.db.QueryRow(ctx, `SELECT `+columns+` FROM messages WHERE practice = ? AND sender = ? AND request_id = ?`,
		practice, sender, requestID))
}

var errDuplicate = errors.New("duplicate request")

// Send implements domain.Repository. On PostgreSQL the conversation's
// counter row is taken first, so concurrent sends to one thread serialize on
// it and a concurrent repeat of a request sees the first one's commit (on
// SQLite the writer runs one transaction at a time).
//
// The outbox row is written after it, under that row lock: on PostgreSQL its
// outbox seq (the relay's order) is taken by that INSERT, so a thread's
// later message takes a higher outbox seq and commits after the earlier one,
// and the relay publishes a thread's events in seq order (outbox.Relay;
// TestConcurrentSendsReachTheStreamInSeqOrder, which fails once the outbox
// seq is taken before the counter). Keep the outbox write after the counter.
func (s *Store) Send(ctx context.Context, m domain.Message, evs func(domain.Message) []domain.Event) (domain.Message, bool, error) {
	extras, err := encodeExtras(m.Extras)
	if err != nil {
		return m, false, err
	}
	if s.db.Dialect() == sqldb.Postgres {
		if out, ok, err := s.sendBatched(ctx, m, extras, evs); ok {
			return out, true, err
		}
		// Not stored by a batch (a repeat, or the batch failed): alone, and
		// the thread's counter is no longer known (it may move here).
		s.seqs.forget(threadKey{m.Practice, m.ConversationID})
	}
	return s.sendAlone(ctx, m, extras, evs)
}

// sendAlone is Send's write of m by itself.
func (s *Store) sendAlone(ctx context.Context, m domain.Message, extras string, evs func(domain.Message) []domain.Event) (domain.Message, bool, error) {
	var err error
	// What the write fills in, in one allocation: a domain.Message is too
	// large for the closure to hold by value, so m and the answer would
	// each escape on their own (the repeat found, rare, is one more).
	st := &struct {
		out      domain.Message
		existing *domain.Message
	}{}
	for attempt := 0; ; attempt++ {
		st.out = m
		err = s.db.Write(ctx, func(tx *sqldb.Tx) error {
			out := &st.out
			var seq int64
			var err error
			if tx.Dialect() == sqldb.Postgres {
				seq, err = insertPostgres(ctx, tx, *out, extras)
			} else {
				seq, err = insertSQLite(ctx, tx, *out, extras)
			}
			if err != nil {
				return err
			}
			if seq == 0 {
				prev, err := one(tx.QueryRow(ctx, `SELECT `+columns+` FROM messages WHERE practice = ? AND sender = ? AND request_id = ?`,
					out.Practice, out.Sender, out.RequestID))
				if err != nil {
					return fmt.Errorf("find repeated request: %w", err)
				}
				st.existing = &prev
				return errDuplicate // rolls back the counter (PostgreSQL)
			}
			out.Seq = seq
			return outbox.AddAll(ctx, tx, evs(*out))
		})
		switch {
		case err == nil:
			return st.out, true, nil
		case errors.Is(err, errDuplicate):
			if st.existing.ContentHash != m.ContentHash {
				return *st.existing, false, domain.ErrRequestIDReused
			}
			return *st.existing, false, nil
		case sqldb.IsUniqueViolation(err) && attempt < 3:
			continue // a concurrent repeat in another thread won: look again
		default:
			return st.out, false, err
		}
	}
}

// encodeExtras is m.Extras as stored: "{}" for a message with neither
// attachments nor an artifact (most of them; what json.Marshal writes for
// it, without its reflection), else its JSON.
func encodeExtras(e domain.Extras) (string, error) {
	if len(e.Attachments) == 0 && e.Artifact == nil {
		return "{}", nil
	}
	b, err := json.Marshal(e)
	return string(b), err
}

// insertSQLite inserts m with the thread's next seq, one above its last
// message's, in one statement; 0: the sender already sent m's request id
// (nothing inserted). The writer runs one transaction at a time and
// messages are never deleted, so the thread's highest seq is its counter:
// SQLite keeps no conversation_seq (0007), and a send is one index search
// and one row fewer than with it. A repeat is found by the insert itself
// (the unique messages_by_request), not by a lookup before it. VALUES with
// a scalar subquery, not INSERT … SELECT … FROM messages: SQLite copies the
// rows of a SELECT from the table it inserts into to a temporary table
// first.
func insertSQLite(ctx context.Context, tx *sqldb.Tx, m domain.Message, extras string) (int64, error) {
	var seq int64
	practice, conv := any(m.Practice), any(m.ConversationID) // each boxed once, used twice
	err := tx.QueryRow(ctx, `INSERT INTO messages (`+columns+`) VALUES (?, ?,
			COALESCE((SELECT MAX(seq) FROM messages WHERE practice = ? AND conversation_id = ?), 0) + 1,
			?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (practice, sender, request_id) DO NOTHING
		RETURNING seq`,
		practice, conv, practice, conv, m.PatientID, m.Sender, m.SenderRole, m.FromPatient, m.Text,
		extras, m.Sensitive, int(m.Status), sqldb.Micros(m.CreateTime), sqldb.Micros(m.DeliverTime),
		sqldb.Micros(m.ReadTime), m.ReadBy, m.RequestID, m.ContentHash, m.SenderDisplayName).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("insert message: %w", err)
	}
	return seq, nil
}

// insertPostgres takes the thread's next seq from its counter row and
// inserts m with it in one statement (a round trip fewer per send): the
// counter upsert is a WITH of the message insert, which returns
// no row for a repeated request.
func insertPostgres(ctx context.Context, tx *sqldb.Tx, m domain.Message, extras string) (int64, error) {
	var seq int64
	err := tx.QueryRow(ctx, insertPostgresSQL,
		m.Practice, m.ConversationID, m.PatientID, m.Sender, m.SenderRole, m.FromPatient, m.Text,
		extras, m.Sensitive, int(m.Status), sqldb.Micros(m.CreateTime), sqldb.Micros(m.DeliverTime),
		sqldb.Micros(m.ReadTime), m.ReadBy, m.RequestID, m.ContentHash, m.SenderDisplayName).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("insert message: %w", err)
	}
	return seq, nil
}

// insertPostgresSQL is insertPostgres' statement. Its placeholders are
// numbered ($n, not ?), so that sqldb does not rewrite its text on every
// send (a copy of the statement each), and the practice and thread are
// sent once for both of their uses.
const insertPostgresSQL = `WITH next AS (INSERT INTO conversation_seq (practice, conversation_id, last_seq) VALUES ($1, $2, 1)
		ON CONFLICT (practice, conversation_id) DO UPDATE SET last_seq = conversation_seq.last_seq + 1
		RETURNING last_seq)
	INSERT INTO messages (` + columns + `)
	SELECT CAST($1 AS TEXT), CAST($2 AS TEXT), next.last_seq, CAST($3 AS TEXT), CAST($4 AS TEXT), CAST($5 AS TEXT), CAST($6 AS BOOLEAN),
		CAST($7 AS TEXT), CAST($8 AS TEXT), CAST($9 AS BOOLEAN), CAST($10 AS INTEGER), CAST($11 AS BIGINT), CAST($12 AS BIGINT),
		CAST($13 AS BIGINT), CAST($14 AS TEXT), CAST($15 AS TEXT), CAST($16 AS TEXT), CAST($17 AS TEXT) FROM next
	ON CONFLICT (practice, sender, request_id) DO NOTHING
	RETURNING seq`

// Get implements domain.Repository.
func (s *Store) Get(ctx context.Context, practice, conversationID string, seq int64) (domain.Message, error) {
	return one(s.db.QueryRow(ctx, `SELECT `+columns+` FROM messages WHERE practice = ? AND conversation_id = ? AND seq = ?`,
		practice, conversationID, seq))
}

// List implements domain.Repository.
func (s *Store) List(ctx context.Context, practice, conversationID string, before int64, limit int) ([]domain.Message, error) {
	q := `SELECT ` + columns + ` FROM messages WHERE practice = ? AND conversation_id = ?`
	args := []any{practice, conversationID}
	if before > 0 {
		q += ` AND seq < ?`
		args = append(args, before)
	}
	q += ` ORDER BY seq DESC LIMIT ?`
	args = append(args, limit)
	rows, err := s.db.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list messages: %w", err)
	}
	defer rows.Close()
	var out []domain.Message
	r := newRow(false)
	for rows.Next() {
		m, err := r.scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Advance implements domain.Repository. The status only rises, so a replayed
// or out-of-order receipt changes nothing.
//
// receipt_marks keeps, per thread and side, the seq up to which every message
// of that side is at least DELIVERED and at least READ (0006). A receipt
// updates only the messages above its mark, found by the primary key, and
// raises the mark to its upTo, but never past the thread's last committed
// message: a later message must still be advanced by a later receipt. Sends
// take their seq under conversation_seq's row lock and commit before the next
// seq is taken, so when message N is visible every message below N is too. The mark is only a lower
// bound of the range: a stale one (a concurrent receipt not yet committed)
// widens it, and "status < ?" still keeps any message from changing twice.
func (s *Store) Advance(ctx context.Context, a domain.Advance, evs func([]domain.Message) []domain.Event) ([]domain.Message, error) {
	var changed []domain.Message
	err := s.receiptWrite(ctx, func() error {
		return s.db.Write(ctx, func(tx *sqldb.Tx) error {
			changed = nil
			return advanceAll(ctx, tx, []domain.Advance{a}, func(_ domain.Advance, ms []domain.Message) []domain.Event {
				changed = ms
				return evs(ms)
			})
		})
	})
	return changed, err
}

// AdvanceAll implements domain.Repository: Advance for each of as in order,
// in one transaction.
func (s *Store) AdvanceAll(ctx context.Context, as []domain.Advance, evs func(domain.Advance, []domain.Message) []domain.Event) error {
	return s.receiptWrite(ctx, func() error {
		return s.db.Write(ctx, func(tx *sqldb.Tx) error { return advanceAll(ctx, tx, as, evs) })
	})
}

// MarkDelivered implements domain.Repository: AdvanceAll as a deferred write
// (sqldb.WriteDeferred), which on SQLite joins another write's commit (a
// send's) if one starts within delay.
func (s *Store) MarkDelivered(ctx context.Context, delay time.Duration, as []domain.Advance, evs func(domain.Advance, []domain.Message) []domain.Event) error {
	return s.receiptWrite(ctx, func() error {
		return s.db.WriteDeferred(ctx, delay, func(tx *sqldb.Tx) error { return advanceAll(ctx, tx, as, evs) })
	})
}

// advanceAll runs as in tx, in order, and writes their events (evs of
// each receipt that changed messages, in the order of as) to the outbox.
func advanceAll(ctx context.Context, tx *sqldb.Tx, as []domain.Advance, evs func(domain.Advance, []domain.Message) []domain.Event) error {
	var all []domain.Event
	if tx.Dialect() == sqldb.Postgres {
		// The batch statement's generic plan (its receipts as arrays) is
		// the one wanted for any batch size, but for small batches
		// PostgreSQL keeps choosing a custom plan for each call: 1.4 ms of
		// planning per batch in the read bench, more than the statement's
		// execution. SET LOCAL goes ahead of the statement in its network
		// write, with BEGIN (sqldb's Tx.SetLocal): no round trip of its own.
		if err := tx.SetLocal(ctx, "plan_cache_mode", "force_generic_plan"); err != nil {
			return fmt.Errorf("advance receipts: %w", err)
		}
		// One statement per run of receipts of one target status (the read
		// consumer's and the delivered receipts' batches are one run each).
		for len(as) > 0 {
			n := 1
			for n < len(as) && as[n].To == as[0].To {
				n++
			}
			changed, err := advancePostgres(ctx, tx, as[:n])
			if err != nil {
				return err
			}
			total := 0
			for _, ms := range changed {
				total += len(ms)
			}
			all = slices.Grow(all, total) // an event per changed message, as a rule
			for i, ms := range changed {
				if len(ms) > 0 {
					all = append(all, evs(as[i], ms)...)
				}
			}
			as = as[n:]
		}
		return outbox.AddAll(ctx, tx, all)
	}
	var changed []domain.Message
	var r *row // made at the first changed message, and reused
	for _, a := range as {
		var err error
		if changed, err = advance(ctx, tx, a, &r, changed[:0]); err != nil {
			return err
		}
		if len(changed) > 0 {
			all = append(all, evs(a, changed)...)
		}
	}
	if err := raiseMarks(ctx, tx, as); err != nil {
		return err
	}
	return outbox.AddAll(ctx, tx, all)
}

// advance runs one receipt in tx (SQLite) and appends the messages it
// changed to changed, scanned into *r (a newThreadRow, made if nil).
func advance(ctx context.Context, tx *sqldb.Tx, a domain.Advance, r **row, changed []domain.Message) ([]domain.Message, error) {
	rows, err := advanceSQLite(ctx, tx, a)
	if err != nil {
		return nil, fmt.Errorf("advance receipts: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		if *r == nil {
			*r = newThreadRow()
		}
		(*r).setThread(a.Practice, a.ConversationID) // the UPDATE's WHERE: its rows are of this thread
		m, err := (*r).scan(rows)
		if err != nil {
			return nil, err
		}
		changed = append(changed, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("advance receipts: %w", err)
	}
	return changed, nil
}

// markColumn is the receipt_marks column of a receipt's target status.
func markColumn(to domain.Status) string {
	if to == domain.Read {
		return "read_seq"
	}
	return "delivered_seq"
}

// advancePostgres runs receipts of one target status, in order, in one
// statement (one round trip for the batch, not one per receipt), and returns
// the messages each changed, in seq order. Its result is that of running
// them one after another: a message goes to the first receipt (in the order
// of as) whose range covers it — a later one of the same thread and side
// would find it at the status already ("status < ?") — and every mark rises
// to the highest of its receipts' ranges, never falls.
//
// Locks: the statement locks the messages it changes in the order of the
// primary key (practice, thread, seq), whatever the order of as — "first"
// is sorted by it, and each of its rows is locked by a LATERAL subquery (FOR
// UPDATE), one after another in that order — and only then the marks it
// raises, in the order of their key (the upsert runs after the main
// statement: it is a WITH that nothing reads). The LATERAL … OFFSET 0
// subqueries also keep the plan on the primary key: joined plainly, a
// generic plan read the whole messages table into a hash join (3.8 ms
// against 0.9 ms for 8 receipts on 3,000 messages). Their ORDER BY m.seq
// (and the lock's seq as a range, >= and <=, where an equality would make
// the order trivial) keeps the generic plan off messages_by_request: made
// from the statistics of a table of a few rows (a fresh database, before
// autovacuum's first ANALYZE of a busy table), both indexes cost the same
// and the planner took messages_by_request, whose only usable column is
// practice: each lookup then read every message of the practice (up to
// 8,954 rows removed by the filter per lookup in the distributed bench,
// BENCHMARKS.md relay23); the ORDER BY costs that index a sort, so the
// primary key wins; the UPDATE's lookup has, beside its equalities, the
// same key as a row comparison (implied by them: no row changes), which
// only the primary key can search by (TestReceiptPlansUseThePrimaryKey). Two concurrent batches (replicas, the read consumer against the
// delivered receipts) touching the same threads take their locks in one
// order and so wait for each other, never deadlock
// (TestConcurrentBatchesDoNotDeadlock). After a wait, FOR UPDATE rechecks
// the row's status against the committed one.
func advancePostgres(ctx context.Context, tx querier, as []domain.Advance) ([][]domain.Message, error) {
	n := len(as)
	practice, conv, reader := make([]string, n), make([]string, n), make([]string, n)
	from, upTo, at := make([]bool, n), make([]int64, n), make([]int64, n)
	for i, a := range as {
		practice[i], conv[i], reader[i] = a.Practice, a.ConversationID, a.Reader
		from[i], upTo[i], at[i] = !a.ReaderIsPatient, a.UpTo, sqldb.Micros(a.At)
	}
	q := advanceDeliveredSQL
	if as[0].To == domain.Read {
		q = advanceReadSQL
	}
	rows, err := tx.Query(ctx, q, practice, conv, from, upTo, at, reader)
	if err != nil {
		return nil, fmt.Errorf("advance receipts: %w", err)
	}
	defer rows.Close()
	// Every changed message in one slice (most receipts change one or
	// none), then each receipt's run of it, in seq order.
	all := make([]domain.Message, 0, n)
	ords := make([]int, 0, n)
	r := newRow(true)
	for rows.Next() {
		m, err := r.scan(rows)
		if err != nil {
			return nil, err
		}
		all, ords = append(all, m), append(ords, r.ord)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("advance receipts: %w", err)
	}
	sort.Sort(byOrdSeq{all, ords})
	changed := make([][]domain.Message, n)
	for i := 0; i < len(all); {
		j := i + 1
		for j < len(all) && ords[j] == ords[i] {
			j++
		}
		changed[ords[i]-1] = all[i:j:j] // an append to one never writes over the next
		i = j
	}
	return changed, nil
}

// byOrdSeq sorts changed messages by their receipt's ordinal, then seq.
type byOrdSeq struct {
	ms   []domain.Message
	ords []int
}

func (b byOrdSeq) Len() int { return len(b.ms) }
func (b byOrdSeq) Less(i, j int) bool {
	if b.ords[i] != b.ords[j] {
		return b.ords[i] < b.ords[j]
	}
	return b.ms[i].Seq < b.ms[j].Seq
}
func (b byOrdSeq) Swap(i, j int) {
	b.ms[i], b.ms[j] = b.ms[j], b.ms[i]
	b.ords[i], b.ords[j] = b.ords[j], b.ords[i]
}

// querier runs a query: a sqldb.Tx (the tests also run advancePostgres on
// a plain transaction, which does not retry a deadlock).
type querier interface {
	Query(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}

// advanceReadSQL and advanceDeliveredSQL are advancePostgres' statement
// for READ and DELIVERED receipts. Arguments: arrays of the receipts'
// practice, thread, from_patient (the side whose messages move), upTo, time
// (µs) and reader.
var advanceReadSQL, advanceDeliveredSQL = advanceSQL(domain.Read), advanceSQL(domain.Delivered)

func advanceSQL(to domain.Status) string {
	setClause := `status = ` + fmt.Sprint(int(domain.Delivered)) + `, deliver_time = l.at`
	readSeq := `0`
	if to == domain.Read {
		setClause = `status = ` + fmt.Sprint(int(domain.Read)) + `, read_time = l.at, read_by = l.reader,
			deliver_time = CASE WHEN m.deliver_time = 0 THEN l.at ELSE m.deliver_time END`
		readSeq = `MAX(hi)` // a READ mark is a DELIVERED mark too
	}
	status := fmt.Sprint(int(to))
	return `WITH r AS (SELECT * FROM unnest(CAST($1 AS TEXT[]), CAST($2 AS TEXT[]), CAST($3 AS BOOLEAN[]),
			CAST($4 AS BIGINT[]), CAST($5 AS BIGINT[]), CAST($6 AS TEXT[]))
			WITH ORDINALITY AS r (practice, conversation_id, from_patient, up_to, at, reader, ord)),
		rng AS (SELECT r.*, COALESCE((SELECT k.` + markColumn(to) + ` FROM receipt_marks k WHERE k.practice = r.practice
					AND k.conversation_id = r.conversation_id AND k.from_patient = r.from_patient), 0) AS lo,
				LEAST(r.up_to, COALESCE((SELECT MAX(seq) FROM messages x
					WHERE x.practice = r.practice AND x.conversation_id = r.conversation_id), 0)) AS hi
			FROM r),
		first AS (SELECT DISTINCT ON (m.practice, m.conversation_id, m.seq) m.practice, m.conversation_id, m.seq,
				rng.ord, rng.at, rng.reader
			FROM rng CROSS JOIN LATERAL (SELECT practice, conversation_id, seq FROM messages m
				WHERE m.practice = rng.practice AND m.conversation_id = rng.conversation_id AND m.seq > rng.lo
					AND m.seq <= rng.up_to AND m.from_patient = rng.from_patient AND m.status < ` + status + ` ORDER BY m.seq OFFSET 0) m
			ORDER BY m.practice, m.conversation_id, m.seq, rng.ord),
		locked AS MATERIALIZED (SELECT f.* FROM first f CROSS JOIN LATERAL (SELECT 1 FROM messages m
				WHERE m.practice = f.practice AND m.conversation_id = f.conversation_id AND m.seq >= f.seq AND m.seq <= f.seq
					AND m.status < ` + status + ` ORDER BY m.seq OFFSET 0 FOR UPDATE) k),
		mark AS (INSERT INTO receipt_marks (practice, conversation_id, from_patient, delivered_seq, read_seq)
			SELECT practice, conversation_id, from_patient, MAX(hi), ` + readSeq + ` FROM rng WHERE hi > lo
			GROUP BY practice, conversation_id, from_patient ORDER BY practice, conversation_id, from_patient
			ON CONFLICT (practice, conversation_id, from_patient) DO UPDATE SET
				delivered_seq = GREATEST(receipt_marks.delivered_seq, EXCLUDED.delivered_seq),
				read_seq = GREATEST(receipt_marks.read_seq, EXCLUDED.read_seq))
		UPDATE messages m SET ` + setClause + `
		FROM locked l
		WHERE m.practice = l.practice AND m.conversation_id = l.conversation_id AND m.seq = l.seq
			AND (m.practice, m.conversation_id, m.seq) >= (l.practice, l.conversation_id, l.seq) AND m.status < ` + status + `
		RETURNING ` + qualified("m", columns) + `, l.ord`
}

// qualified is the column list cols with each column prefixed by alias.
func qualified(alias, cols string) string {
	fields := strings.Split(cols, ",")
	for i, f := range fields {
		fields[i] = alias + "." + strings.TrimSpace(f)
	}
	return strings.Join(fields, ", ")
}

// advanceSQLite is the same in fewer statements (SQLite has no writing
// WITH): update the messages above the mark, read in the UPDATE itself;
// raiseMarks then raises the marks of a transaction's receipts in one
// statement. The writer runs one transaction at a time, so nothing moves in
// between. A later receipt of the same transaction, thread and side reads
// the mark before the earlier one raised it: its range is only wider, and
// "status < ?" keeps a message from changing twice (as with a stale mark).
func advanceSQLite(ctx context.Context, tx *sqldb.Tx, a domain.Advance) (*sql.Rows, error) {
	from := !a.ReaderIsPatient
	at := any(sqldb.Micros(a.At))
	practice, conv := any(a.Practice), any(a.ConversationID) // each boxed once, used twice
	if a.To == domain.Read {
		return tx.Query(ctx, advanceReadSQLite, int(domain.Read), at, a.Reader, at,
			practice, conv, practice, conv, from, a.UpTo, from, int(a.To))
	}
	return tx.Query(ctx, advanceDeliveredSQLite, int(domain.Delivered), at,
		practice, conv, practice, conv, from, a.UpTo, from, int(a.To))
}

// advanceReadSQLite and advanceDeliveredSQLite are advanceSQLite's
// statements (arguments: the SET clause's, then practice, conversation,
// practice, conversation, from_patient, upTo, from_patient, target status).
var (
	advanceReadSQLite = advanceSQLiteSQL(`status = ?, read_time = ?, read_by = ?, deliver_time = CASE WHEN deliver_time = 0 THEN ? ELSE deliver_time END`,
		markColumn(domain.Read))
	advanceDeliveredSQLite = advanceSQLiteSQL(`status = ?, deliver_time = ?`, markColumn(domain.Delivered))
)

func advanceSQLiteSQL(setClause, mark string) string {
	return `UPDATE messages SET ` + setClause + `
		WHERE practice = ? AND conversation_id = ?
			AND seq > COALESCE((SELECT ` + mark + ` FROM receipt_marks WHERE practice = ? AND conversation_id = ? AND from_patient = ?), 0)
			AND seq <= ? AND from_patient = ? AND status < ?
		RETURNING ` + threadColumns
}

// raiseMarks raises the marks of as after their UPDATEs (SQLite): each to its upTo or the thread's last
// seq, whichever is lower (a READ mark is a DELIVERED mark too), up to
// maxMarkRows receipts per statement. A mark that does not move is not
// written; a thread without messages gets none. Two receipts of one thread
// and side in one statement leave the higher mark (the upsert keeps the
// maximum). The last seq is a scalar subquery: as an aggregate of the
// FROM clause SQLite would read the whole thread for it. The inner SELECT
// has LIMIT -1 (no limit) so that SQLite runs it as a subquery of its own
// instead of flattening it into the INSERT's SELECT, which copied hi, and
// with it the subquery, to each of its three uses: three searches of the
// thread's last seq per receipt instead of one (EXPLAIN QUERY PLAN).
func raiseMarks(ctx context.Context, tx *sqldb.Tx, as []domain.Advance) error {
	for len(as) > 0 {
		n := min(len(as), maxMarkRows)
		args := make([]any, 0, 5*n)
		for _, a := range as[:n] {
			read := 0
			if a.To == domain.Read {
				read = 1
			}
			args = append(args, a.Practice, a.ConversationID, !a.ReaderIsPatient, a.UpTo, read)
		}
		if _, err := tx.Exec(ctx, raiseMarksSQL[n], args...); err != nil {
			return fmt.Errorf("raise receipt marks: %w", err)
		}
		as = as[n:]
	}
	return nil
}

// maxMarkRows bounds the receipts of one raiseMarks statement, and so the
// number of distinct statements the writer keeps prepared for it.
const maxMarkRows = 16

// raiseMarksSQL[n] raises n receipts' marks (VALUES columns: practice,
// conversation, from_patient, upTo, READ as 1).
var raiseMarksSQL = func() [maxMarkRows + 1]string {
	var qs [maxMarkRows + 1]string
	for n := 1; n <= maxMarkRows; n++ {
		qs[n] = `INSERT INTO receipt_marks (practice, conversation_id, from_patient, delivered_seq, read_seq)
		SELECT column1, column2, column3, hi, hi * column5 FROM (SELECT column1, column2, column3, column5,
			MIN(column4, COALESCE((SELECT MAX(seq) FROM messages WHERE practice = column1 AND conversation_id = column2), 0)) AS hi
			FROM (VALUES (?, ?, ?, ?, ?)` + strings.Repeat(`, (?, ?, ?, ?, ?)`, n-1) + `) LIMIT -1)
		WHERE hi > 0
		ON CONFLICT (practice, conversation_id, from_patient) DO UPDATE SET
			delivered_seq = MAX(delivered_seq, excluded.delivered_seq), read_seq = MAX(read_seq, excluded.read_seq)
		WHERE excluded.delivered_seq > delivered_seq OR excluded.read_seq > read_seq`
	}
	return qs
}()

// Record implements domain.Repository.
func (s *Store) Record(ctx context.Context, evs ...domain.Event) error {
	if len(evs) == 0 {
		return nil
	}
	return s.db.Write(ctx, func(tx *sqldb.Tx) error { return outbox.AddAll(ctx, tx, evs) })
}
