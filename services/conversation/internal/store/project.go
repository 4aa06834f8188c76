package store

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// The projection of new messages (delivery's message.created), a batch per
// transaction. The threads with one new message in the batch (the common
// case) take their index rows in one statement and one UPDATE that derives
// each of them from the index (applyOnes: two statements for up to 16
// threads). A thread with several: one read of the thread, the index rows of its
// messages in one statement, the thread as of each message derived in Go
// (threadState: what that UPDATE would compute after each message), and
// one UPDATE with the result; on PostgreSQL the threads with several share
// the read and the index rows' statements (applyThreads: up to indexRows
// threads, one round trip each instead of one each per thread). The events
// of all messages go to the outbox together.
//
// Each index row carries its ordinal within its side of the thread (1 for
// the side's oldest message; the unread count subtracts two of them). A
// message newer than its side's newest takes the next ordinal; one that
// arrives out of order (older than a row of its side already there) has the
// side numbered again from it (renumber), so the ordinals stay exact in any
// arrival order. The thread's rows are written by one transaction at a time
// (SQLite's single writer; on PostgreSQL lockThreads locks the batch's
// threads first).

// sidesColumns follow convColumns in the thread read: the newest staff and
// patient sequence numbers in the index, and needs reply as the index has it
// (the oldest patient message after the newest staff message; 0: none).
// Then the ordinals of the newest staff and patient rows.
// Arguments: false, true, true, false, false, true.
const sidesColumns = `COALESCE((SELECT MAX(m.seq) FROM message_index m WHERE m.practice = c.practice AND m.conversation_id = c.id
		AND m.from_patient = ?), 0),
	COALESCE((SELECT MAX(m.seq) FROM message_index m WHERE m.practice = c.practice AND m.conversation_id = c.id
		AND m.from_patient = ?), 0),
	COALESCE((SELECT MIN(m.create_time) FROM message_index m WHERE m.practice = c.practice AND m.conversation_id = c.id
		AND m.from_patient = ? AND m.seq > COALESCE((SELECT MAX(s.seq) FROM message_index s WHERE s.practice = c.practice
		AND s.conversation_id = c.id AND s.from_patient = ?), 0)), 0),
	COALESCE((SELECT m.ordinal FROM message_index m WHERE m.practice = c.practice AND m.conversation_id = c.id
		AND m.from_patient = ? ORDER BY m.seq DESC LIMIT 1), 0),
	COALESCE((SELECT m.ordinal FROM message_index m WHERE m.practice = c.practice AND m.conversation_id = c.id
		AND m.from_patient = ? ORDER BY m.seq DESC LIMIT 1), 0)`

// indexRows bounds the rows of one message_index INSERT (and so the distinct
// statements the statement cache holds for it).
const indexRows = 16

// insertIndexSQL[n] inserts n index rows (of one thread or several) and
// returns the keys of those that were new (a replay's row exists: ON
// CONFLICT skips it and returns nothing).
var insertIndexSQL = func() [indexRows + 1]string {
	var qs [indexRows + 1]string
	for n := 1; n <= indexRows; n++ {
		qs[n] = `INSERT INTO message_index (practice, conversation_id, seq, from_patient, create_time, ordinal) VALUES (?, ?, ?, ?, ?, ?)` +
			strings.Repeat(`, (?, ?, ?, ?, ?, ?)`, n-1) +
			` ON CONFLICT (practice, conversation_id, from_patient, seq) DO NOTHING RETURNING practice, conversation_id, seq, from_patient`
	}
	return qs
}()

// indexKey is a message_index row's key within its thread.
type indexKey struct {
	seq         int64
	fromPatient bool
}

// thread is one thread's messages of a batch: indexes into the batch, in
// sequence order (a duplicate after the first of its key).
type thread struct {
	practice, id string
	msgs         []int
}

// byThread groups ms by thread; threads come in (practice, id) order, so
// that two transactions lock the threads they share in the same order.
func byThread(ms []domain.MessageApplied) []thread {
	pos := map[[2]string]int{}
	var out []thread
	for i, m := range ms {
		k := [2]string{m.Practice, m.ConversationID}
		j, ok := pos[k]
		if !ok {
			j = len(out)
			pos[k] = j
			out = append(out, thread{practice: m.Practice, id: m.ConversationID})
		}
		out[j].msgs = append(out[j].msgs, i)
	}
	for _, t := range out {
		slices.SortStableFunc(t.msgs, func(a, b int) int { return cmp.Compare(ms[a].Seq, ms[b].Seq) })
	}
	slices.SortFunc(out, func(a, b thread) int {
		return cmp.Or(strings.Compare(a.practice, b.practice), strings.Compare(a.id, b.id))
	})
	return out
}

// projectDelay is how long a projected batch may wait on SQLite for another
// write's commit to join (sqldb.WriteDeferred).
const projectDelay = 3 * time.Millisecond

// ApplyMessages implements domain.Repository.
func (s *Store) ApplyMessages(ctx context.Context, ms []domain.MessageApplied,
	evs func(m domain.MessageApplied, c domain.Conversation, recipients []string) []domain.Event) ([]domain.Outcome, error) {
	threads := byThread(ms)
	out := make([]domain.Outcome, len(ms))
	var events []domain.Event
	var traces []string // of each event, its message's Traceparent
	emit := func(m domain.MessageApplied, c domain.Conversation, recipients []string) {
		evs := evs(m, c, recipients)
		events = append(events, evs...)
		for range evs {
			traces = append(traces, m.Traceparent)
		}
	}
	var joined []string // participants the batch made sure of
	err := s.db.WriteDeferred(ctx, projectDelay, func(tx *sqldb.Tx) error {
		// PostgreSQL may run this again.
		events, traces, joined = events[:0], traces[:0], joined[:0]
		var saves *threadSaves // nil: each thread's UPDATE on its own (SQLite)
		if tx.Dialect() == sqldb.Postgres {
			saves = &threadSaves{}
			// The projection's statements take their rows as parameters
			// (up to indexRows threads or rows each, a text per count), and
			// their generic plans are the ones wanted (key lookups on the
			// primary keys; TestProjectionPlansAreGeneric). PostgreSQL plans
			// a statement anew for its first five runs per connection and
			// text (16 texts a statement here, 8 connections), and kept
			// choosing custom plans after them for the thread read and the
			// single messages' UPDATE: 0.4–1 ms of planning each, more than
			// their execution (BENCHMARKS.md, dist22). SET LOCAL goes ahead
			// of the first statement, in its network write.
			if err := tx.SetLocal(ctx, "plan_cache_mode", "force_generic_plan"); err != nil {
				return err
			}
		}
		live, err := lockThreads(ctx, tx, threads)
		if err != nil {
			return err
		}
		var ones []int            // the batch's messages that are their thread's only new one
		var several []freshThread // the threads with several
		for ti, t := range threads {
			if live != nil && !live[ti] {
				for _, i := range t.msgs {
					out[i] = domain.NoThread
				}
				continue
			}
			fresh := freshOf(ms, t, out)
			if len(fresh) == 1 {
				ones = append(ones, fresh[0])
				continue
			}
			several = append(several, freshThread{thread: t, fresh: fresh})
		}
		// On PostgreSQL the threads with several new messages are read in
		// one statement and take their index rows in one (a round trip each
		// per thread before); on SQLite, one thread at a time as before.
		step := 1
		if tx.Dialect() == sqldb.Postgres {
			step = indexRows
		}
		for rest := several; len(rest) > 0; {
			n := min(len(rest), step)
			users := threadUsers{known: &s.participants, joined: &joined, noRecipients: s.NoRecipients}
			if err := applyThreads(ctx, tx, ms, rest[:n], out, users, emit, saves); err != nil {
				return err
			}
			rest = rest[n:]
		}
		for rest := ones; len(rest) > 0; {
			n := min(len(rest), indexRows)
			users := threadUsers{known: &s.participants, joined: &joined, noRecipients: s.NoRecipients}
			if err := applyOnes(ctx, tx, ms, rest[:n], out, users, emit); err != nil {
				return err
			}
			rest = rest[n:]
		}
		if err := saves.flush(ctx, tx); err != nil {
			return err
		}
		// One AddAll for the events of messages of one trace (all of them
		// when tracing is off), their rows carrying it.
		for len(events) > 0 {
			n := 1
			for n < len(events) && traces[n] == traces[0] {
				n++
			}
			if err := outbox.AddAll(telemetry.FromTraceparent(ctx, traces[0]), tx, events[:n]); err != nil {
				return err
			}
			events, traces = events[n:], traces[n:]
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.participants.add(joined) // committed: they are participants for good
	return out, nil
}

// lockThreads locks the batch's threads on PostgreSQL, before the index is
// read: another transaction projecting one of them (another replica, a
// redelivery) has then committed its index rows, and the reads after it,
// each with a snapshot of its own, see them. Threads are locked in their
// (practice, id) byte order (COLLATE "C", byThread's order), so that two
// transactions lock the threads they share in the same order. live[i] says
// whether threads[i] exists; nil on SQLite (one writer: nothing to lock).
func lockThreads(ctx context.Context, tx *sqldb.Tx, threads []thread) ([]bool, error) {
	if tx.Dialect() != sqldb.Postgres {
		return nil, nil
	}
	locked := make(map[[2]string]bool, len(threads))
	for from := 0; from < len(threads); from += indexRows {
		chunk := threads[from:min(from+indexRows, len(threads))]
		args := make([]any, 0, 2*len(chunk))
		for _, t := range chunk {
			args = append(args, t.practice, t.id)
		}
		if err := scanKeys(ctx, tx, lockThreadsSQL[len(chunk)], args, locked); err != nil {
			return nil, fmt.Errorf("lock conversations: %w", err)
		}
	}
	live := make([]bool, len(threads))
	for i, t := range threads {
		live[i] = locked[[2]string{t.practice, t.id}]
	}
	return live, nil
}

// lockThreadsSQL[n] locks n threads (PostgreSQL only).
var lockThreadsSQL = func() [indexRows + 1]string {
	var qs [indexRows + 1]string
	for n := 1; n <= indexRows; n++ {
		qs[n] = `SELECT practice, id FROM conversations WHERE (practice, id) IN ((?, ?)` + strings.Repeat(`, (?, ?)`, n-1) +
			`) ORDER BY practice COLLATE "C", id COLLATE "C" FOR UPDATE`
	}
	return qs
}()

// freshOf is t's messages less those seen earlier in the batch (a key seen
// twice is a replay after its first), in sequence order.
func freshOf(ms []domain.MessageApplied, t thread, out []domain.Outcome) []int {
	fresh := make([]int, 0, len(t.msgs))
	seen := make(map[indexKey]bool, len(t.msgs))
	for _, i := range t.msgs {
		k := indexKey{ms[i].Seq, ms[i].FromPatient}
		if seen[k] {
			out[i] = domain.Replayed
			continue
		}
		seen[k] = true
		fresh = append(fresh, i)
	}
	return fresh
}

// freshThread is a thread of the batch with its fresh messages (freshOf).
type freshThread struct {
	thread
	fresh []int
}

// loadThreadSQL reads one thread for applyThreads, loadThreadsSQL[n] n of
// them (PostgreSQL), in the columns convColumns, sidesColumns. Arguments:
// false, true, true, false, false, true, then each thread's practice and id.
var (
	loadThreadSQL  = `SELECT ` + convColumns + `, ` + sidesColumns + ` FROM conversations c WHERE c.practice = ? AND c.id = ?`
	loadThreadsSQL = func() [indexRows + 1]string {
		var qs [indexRows + 1]string
		qs[1] = loadThreadSQL
		for n := 2; n <= indexRows; n++ {
			qs[n] = `SELECT ` + convColumns + `, ` + sidesColumns + ` FROM conversations c WHERE (c.practice, c.id) IN ((?, ?)` +
				strings.Repeat(`, (?, ?)`, n-1) + `)`
		}
		return qs
	}()
)

// threadRow is a message_index row's key.
type threadRow struct {
	practice, id string
	indexKey
}

// loaded is a thread as applyThreads read it.
type loaded struct {
	st  threadState
	ord [2]int64 // the newest staff and patient rows' ordinals
}

// applyThreads projects the fresh messages (several each) of ts, at most
// indexRows threads, and sets their outcomes: the threads read in one
// statement (after lockThreads has locked them on PostgreSQL, so that the
// read sees what the transactions before committed), their index rows in
// one statement per indexRows rows, then each thread in order as one
// thread alone was (renumbering, recipients, events, its UPDATE at COMMIT).
// batchUsers is copied per thread (nothing loaded yet).
func applyThreads(ctx context.Context, tx *sqldb.Tx, ms []domain.MessageApplied, ts []freshThread, out []domain.Outcome,
	batchUsers threadUsers, emit func(domain.MessageApplied, domain.Conversation, []string), saves *threadSaves) error {
	args := make([]any, 0, 6+2*len(ts))
	args = append(args, false, true, true, false, false, true)
	for _, t := range ts {
		args = append(args, t.practice, t.id)
	}
	got := make(map[[2]string]*loaded, len(ts))
	if err := func() error {
		rows, err := tx.Query(ctx, loadThreadsSQL[len(ts)], args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			l := new(loaded)
			if l.st.c, err = scanConv(rows, false, &l.st.staffSeq, &l.st.patientSeq, &l.st.awaiting, &l.ord[0], &l.ord[1]); err != nil {
				return err
			}
			l.st.awaitingBefore = l.st.awaiting
			got[[2]string{l.st.c.Practice, l.st.c.ID}] = l
		}
		return rows.Err()
	}(); err != nil {
		return fmt.Errorf("load conversation: %w", err)
	}

	// Each thread's state before the batch's rows, and its rows.
	states := make([]*loaded, len(ts))
	var newest [][2]int64 // per thread: the sides' newest before the batch
	var rowArgs []any
	for ti, t := range ts {
		l := got[[2]string{t.practice, t.id}]
		if l == nil {
			for _, i := range t.msgs {
				out[i] = domain.NoThread
			}
			newest = append(newest, [2]int64{})
			continue
		}
		states[ti] = l
		st := &l.st
		// A staff message older than a patient message already in the
		// index (arrived out of order) leaves those newer patient messages
		// waiting: their oldest time is read now, before this batch's rows
		// are in.
		for _, i := range t.fresh {
			m := ms[i]
			if m.FromPatient || m.Seq <= st.staffSeq || m.Seq >= st.patientSeq {
				continue
			}
			var at int64
			if err := tx.QueryRow(ctx, `SELECT COALESCE(MIN(create_time), 0) FROM message_index WHERE practice = ? AND conversation_id = ?
			AND from_patient = ? AND seq > ?`, t.practice, t.id, true, m.Seq).Scan(&at); err != nil {
				return fmt.Errorf("read needs reply: %w", err)
			}
			if st.waitingAfter == nil {
				st.waitingAfter = map[int64]int64{}
			}
			st.waitingAfter[m.Seq] = at
		}
		// A message newer than its side's newest takes the next ordinal (it
		// cannot be a replay); an older one 0 until its side is numbered
		// again (below), if it was new.
		nw := [2]int64{st.staffSeq, st.patientSeq}
		newest = append(newest, nw)
		for _, i := range t.fresh {
			m := ms[i]
			side, ordinal := sideOf(m.FromPatient), int64(0)
			if m.Seq > nw[side] {
				l.ord[side]++
				ordinal = l.ord[side]
			}
			rowArgs = append(rowArgs, m.Practice, m.ConversationID, m.Seq, m.FromPatient, sqldb.Micros(m.Time), ordinal)
		}
	}
	inserted := make(map[threadRow]bool, len(rowArgs)/6)
	for len(rowArgs) > 0 {
		n := min(len(rowArgs)/6, indexRows)
		if err := func() error {
			rows, err := tx.Query(ctx, insertIndexSQL[n], rowArgs[:6*n]...)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var k threadRow
				if err := rows.Scan(&k.practice, &k.id, &k.seq, &k.fromPatient); err != nil {
					return err
				}
				inserted[k] = true
			}
			return rows.Err()
		}(); err != nil {
			return fmt.Errorf("insert message index: %w", err)
		}
		rowArgs = rowArgs[6*n:]
	}

	for ti, t := range ts {
		l := states[ti]
		if l == nil {
			continue
		}
		st := &l.st
		isNew := func(m domain.MessageApplied) bool {
			return inserted[threadRow{t.practice, t.id, indexKey{m.Seq, m.FromPatient}}]
		}
		// Number a side again from its oldest new row older than the side's
		// newest before the batch (fresh is in sequence order).
		var renumbered [2]bool
		for _, i := range t.fresh {
			m := ms[i]
			side := sideOf(m.FromPatient)
			if renumbered[side] || m.Seq > newest[ti][side] || !isNew(m) {
				continue
			}
			if err := renumber(ctx, tx, t.practice, t.id, m.FromPatient, m.Seq); err != nil {
				return err
			}
			renumbered[side] = true
		}

		applied := false
		users := batchUsers
		for _, i := range t.fresh {
			m := ms[i]
			if !isNew(m) {
				out[i] = domain.Replayed
				continue
			}
			out[i], applied = domain.Applied, true
			st.apply(m)
			var recipients []string
			if m.FromPatient {
				var err error
				if recipients, err = users.staff(ctx, tx, t.thread); err != nil {
					return err
				}
			} else {
				if err := users.ensure(ctx, tx, t.thread, m); err != nil {
					return err
				}
				recipients = []string{st.c.Patient()}
			}
			emit(m, st.c, recipients)
		}
		if applied {
			if err := st.save(ctx, tx, saves); err != nil {
				return err
			}
		}
	}
	return nil
}

// sideOf indexes per-side arrays: 0 staff, 1 patient.
func sideOf(fromPatient bool) int {
	if fromPatient {
		return 1
	}
	return 0
}

// renumber sets the ordinals of a side's rows from seq from on: the ordinal
// of the side's newest row below from, plus their rank. It reads and writes
// only those rows (after an out-of-order arrival, the side's messages newer
// than it).
func renumber(ctx context.Context, tx *sqldb.Tx, practice, id string, fromPatient bool, from int64) error {
	_, err := tx.Exec(ctx, `UPDATE message_index SET ordinal = r.n FROM (SELECT seq, ROW_NUMBER() OVER (ORDER BY seq)
		+ COALESCE((SELECT p.ordinal FROM message_index p WHERE p.practice = ? AND p.conversation_id = ? AND p.from_patient = ?
		AND p.seq < ? ORDER BY p.seq DESC LIMIT 1), 0) AS n
		FROM message_index WHERE practice = ? AND conversation_id = ? AND from_patient = ? AND seq >= ?) r
		WHERE message_index.practice = ? AND message_index.conversation_id = ? AND message_index.from_patient = ?
		AND message_index.seq = r.seq`,
		practice, id, fromPatient, from, practice, id, fromPatient, from, practice, id, fromPatient)
	if err != nil {
		return fmt.Errorf("number message index: %w", err)
	}
	return nil
}

// applyOnes projects messages that are each their thread's only new one in
// the batch (the common case: a sender waits for each send), up to
// indexRows of them, in two statements whatever their number: their index
// rows (for threads that exist, rows that are new), each with the ordinal
// after its side's previous row, then one UPDATE that derives each of their
// threads from the index and returns it. A message older than its thread's
// last (out of order) has its side numbered again from it.
func applyOnes(ctx context.Context, tx *sqldb.Tx, ms []domain.MessageApplied, idx []int, out []domain.Outcome,
	batchUsers threadUsers, emit func(domain.MessageApplied, domain.Conversation, []string)) error {
	args := make([]any, 0, 5*len(idx)+3)
	for _, i := range idx {
		m := ms[i]
		args = append(args, m.Practice, m.ConversationID, m.Seq, m.FromPatient, sqldb.Micros(m.Time))
	}
	inserted := make(map[[2]string]bool, len(idx)) // one message per thread
	if err := scanKeys(ctx, tx, insertOnesSQL[len(idx)], args, inserted); err != nil {
		return fmt.Errorf("insert message index: %w", err)
	}
	applied := make([]int, 0, len(idx))
	for _, i := range idx {
		m := ms[i]
		if inserted[[2]string{m.Practice, m.ConversationID}] {
			applied = append(applied, i)
			continue
		}
		// A replay, or a thread that does not exist.
		var one int
		switch err := tx.QueryRow(ctx, `SELECT 1 FROM conversations WHERE practice = ? AND id = ?`, m.Practice, m.ConversationID).Scan(&one); {
		case errors.Is(err, sql.ErrNoRows):
			out[i] = domain.NoThread
		case err != nil:
			return fmt.Errorf("load conversation: %w", err)
		default:
			out[i] = domain.Replayed
		}
	}
	if len(applied) == 0 {
		return nil
	}
	// The practice, thread, seq and time boxed for the INSERT go to the
	// UPDATE again (each boxing is an allocation): applied is a
	// subsequence of idx, the INSERT's rows.
	upd := make([]any, 0, 5*len(applied)+3)
	upd = append(upd, int(domain.Active), true, false)
	k := 0
	for _, i := range applied {
		for idx[k] != i {
			k++
		}
		a := args[5*k : 5*k+5] // practice, conversation, seq, from_patient, time
		upd = append(upd, a[0], a[1], a[2], a[4], ms[i].Preview)
	}
	convs := make(map[[2]string]domain.Conversation, len(applied))
	if err := func() error {
		rows, err := tx.Query(ctx, updateOnesSQL[len(applied)], upd...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			c, err := scanConv(rows, false)
			if err != nil {
				return err
			}
			convs[[2]string{c.Practice, c.ID}] = c
		}
		return rows.Err()
	}(); err != nil {
		return fmt.Errorf("update conversation: %w", err)
	}
	for _, i := range applied {
		m := ms[i]
		c, ok := convs[[2]string{m.Practice, m.ConversationID}]
		if !ok { // it exists: the INSERT saw it
			return fmt.Errorf("update conversation %s/%s: not returned", m.Practice, m.ConversationID)
		}
		// last_message_seq is the newest projected message of either side:
		// no row is newer than m unless it is.
		if c.LastMessageSeq > m.Seq {
			if err := renumber(ctx, tx, m.Practice, m.ConversationID, m.FromPatient, m.Seq); err != nil {
				return err
			}
		}
		out[i] = domain.Applied
		t := thread{practice: m.Practice, id: m.ConversationID}
		users := batchUsers // a fresh one per thread: nothing loaded yet
		recipients := []string{c.Patient()}
		if m.FromPatient {
			var err error
			if recipients, err = users.staff(ctx, tx, t); err != nil {
				return err
			}
		} else if err := users.ensure(ctx, tx, t, m); err != nil {
			return err
		}
		emit(m, c, recipients)
	}
	return nil
}

// scanKeys runs q and adds the (practice, conversation) of each row it
// returns to keys.
func scanKeys(ctx context.Context, tx *sqldb.Tx, q string, args []any, keys map[[2]string]bool) error {
	rows, err := tx.Query(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var k [2]string
		if err := rows.Scan(&k[0], &k[1]); err != nil {
			return err
		}
		keys[k] = true
	}
	return rows.Err()
}

// valuesSQL is a VALUES list of n rows of the given column types (each
// value cast, so that PostgreSQL knows the parameters' types).
func valuesSQL(n int, types ...string) string {
	row := make([]string, len(types))
	for i, t := range types {
		row[i] = "CAST(? AS " + t + ")"
	}
	one := "(" + strings.Join(row, ", ") + ")"
	return "VALUES " + one + strings.Repeat(", "+one, n-1)
}

// The rows of insertOnesSQL and updateOnesSQL are a VALUES list in FROM
// (the statement starts with INSERT or UPDATE, which sqldb keeps prepared;
// a WITH it would parse every time), whose columns are column1, column2…
// on both dialects.

// insertOnesSQL[n] inserts the index rows of n messages of distinct threads
// (practice, conversation, seq, from patient, create time), each with the
// ordinal after its side's previous row (the statement's reads do not see
// its own rows: one row per thread), if its thread exists; it returns the
// threads whose row was new.
var insertOnesSQL = func() [indexRows + 1]string {
	var qs [indexRows + 1]string
	for n := 1; n <= indexRows; n++ {
		qs[n] = `INSERT INTO message_index (practice, conversation_id, seq, from_patient, create_time, ordinal)
			SELECT v.column1, v.column2, v.column3, v.column4, v.column5,
			COALESCE((SELECT p.ordinal FROM message_index p WHERE p.practice = v.column1 AND p.conversation_id = v.column2
			AND p.from_patient = v.column4 AND p.seq < v.column3 ORDER BY p.seq DESC LIMIT 1), 0) + 1
			FROM (` + valuesSQL(n, "TEXT", "TEXT", "BIGINT", "BOOLEAN", "BIGINT") + `) AS v
			WHERE EXISTS (SELECT 1 FROM conversations c WHERE c.practice = v.column1 AND c.id = v.column2)
			ON CONFLICT (practice, conversation_id, from_patient, seq) DO NOTHING RETURNING practice, conversation_id`
	}
	return qs
}()

// updateOnesSQL[n] updates n threads (practice, id, seq, create time,
// preview), each by its one new message: the newest message's fields only
// when the message is newer than the stored one (SET reads the row as it
// was), and needs reply from the index (message_index's key leads with the
// side). It returns the threads. Arguments before the rows: domain.Active,
// true, false.
var updateOnesSQL = func() [indexRows + 1]string {
	var qs [indexRows + 1]string
	for n := 1; n <= indexRows; n++ {
		qs[n] = `UPDATE conversations SET
			last_message_time = CASE WHEN conversations.last_message_seq < v.column3 THEN v.column4 ELSE conversations.last_message_time END,
			last_message_preview = CASE WHEN conversations.last_message_seq < v.column3 THEN v.column5 ELSE conversations.last_message_preview END,
			last_activity = CASE WHEN conversations.last_message_seq < v.column3 THEN v.column4 ELSE conversations.last_activity END,
			state = CASE WHEN conversations.last_message_seq < v.column3 THEN ? ELSE conversations.state END,
			last_message_seq = CASE WHEN conversations.last_message_seq < v.column3 THEN v.column3 ELSE conversations.last_message_seq END,
			awaiting_reply_since = COALESCE((SELECT MIN(m.create_time)
			FROM message_index m WHERE m.practice = conversations.practice AND m.conversation_id = conversations.id AND m.from_patient = ?
			AND m.seq > COALESCE((SELECT MAX(s.seq) FROM message_index s WHERE s.practice = conversations.practice
			AND s.conversation_id = conversations.id AND s.from_patient = ?), 0)), 0)
			FROM (` + valuesSQL(n, "TEXT", "TEXT", "BIGINT", "BIGINT", "TEXT") + `) AS v
			WHERE conversations.practice = v.column1 AND conversations.id = v.column2 RETURNING ` + returningConvColumns
	}
	return qs
}()

// threadState is a thread as each message of a batch leaves it, as
// applyOnes' UPDATE derives it from the index: the newest message's fields
// change only for a message newer than the newest so far (reactivating the
// thread), and needs reply is the oldest patient message after the newest
// staff message, whatever order messages arrive in.
type threadState struct {
	c        domain.Conversation
	newest   bool  // a message of the batch is newer than the thread's last
	staffSeq int64 // newest staff message in the index so far
	// patientSeq is the newest patient message in the index before the batch.
	patientSeq int64
	// awaiting is needs reply so far (micros; 0: none) and awaitingBefore
	// before the batch.
	awaiting, awaitingBefore int64
	// waitingAfter[s] is the oldest patient message in the index before the
	// batch with a sequence number above s (0: none), for the staff
	// messages older than patientSeq.
	waitingAfter map[int64]int64
}

// apply advances the state by m, the next message in sequence order.
func (st *threadState) apply(m domain.MessageApplied) {
	at := sqldb.Micros(m.Time)
	if m.Seq > st.c.LastMessageSeq {
		st.c.LastMessageTime, st.c.LastMessagePreview = sqldb.FromMicros(at), m.Preview
		st.c.State, st.c.LastMessageSeq = domain.Active, m.Seq
		st.newest = true
	}
	switch {
	case m.FromPatient && m.Seq > st.staffSeq:
		// Unanswered: it waits unless an older one already does.
		if st.awaiting == 0 || at < st.awaiting {
			st.awaiting = at
		}
	case !m.FromPatient && m.Seq > st.staffSeq:
		// Answers everything before it. The batch's patient messages so far
		// are older (sequence order); what still waits is the index's
		// patient messages newer than m from before the batch.
		st.staffSeq = m.Seq
		st.awaiting = 0
		if m.Seq < st.patientSeq {
			st.awaiting = st.waitingAfter[m.Seq]
		}
	}
	st.c.AwaitingReplySince = time.Time{}
	if st.awaiting > 0 {
		st.c.AwaitingReplySince = sqldb.FromMicros(st.awaiting)
	}
}

// save writes the state after the batch's last message. It is the last
// statement of the thread's (its row is locked by lockThreads), and no
// later statement of the batch reads that row (each thread is applied once
// per batch): on PostgreSQL it goes with the COMMIT (sqldb.Tx.ExecAtCommit),
// in the transaction's last round trip, and a thread whose newest message
// changed goes into saves (non-nil on PostgreSQL), whose flush updates the
// batch's threads in one statement.
func (st *threadState) save(ctx context.Context, tx *sqldb.Tx, saves *threadSaves) error {
	c := st.c
	var err error
	switch {
	case st.newest && saves != nil:
		at := sqldb.Micros(c.LastMessageTime)
		saves.args = append(saves.args, c.Practice, c.ID, at, c.LastMessagePreview, int(c.State), c.LastMessageSeq, st.awaiting)
	case st.newest:
		at := sqldb.Micros(c.LastMessageTime)
		err = tx.ExecAtCommit(ctx, `UPDATE conversations SET last_message_time = ?, last_message_preview = ?, last_activity = ?,
			state = ?, last_message_seq = ?, awaiting_reply_since = ? WHERE practice = ? AND id = ?`,
			at, c.LastMessagePreview, at, int(c.State), c.LastMessageSeq, st.awaiting, c.Practice, c.ID)
	case st.awaiting != st.awaitingBefore:
		err = tx.ExecAtCommit(ctx, `UPDATE conversations SET awaiting_reply_since = ? WHERE practice = ? AND id = ?`,
			st.awaiting, c.Practice, c.ID)
	}
	if err != nil {
		return fmt.Errorf("update conversation: %w", err)
	}
	return nil
}

// threadSaves are the threads of a batch whose newest message changed
// (threadState.save), saveArgs arguments each, to be updated in one
// statement per indexRows threads at COMMIT (flush): a batch of k such
// threads sent k UPDATEs, each a Bind and Execute the server ran on its own
// (BENCHMARKS.md, pg24).
type threadSaves struct{ args []any }

// saveArgs is a thread's arguments in threadSaves: practice, id, newest
// message's time, preview, state, newest seq, needs reply.
const saveArgs = 7

// flush holds back the UPDATEs of s's threads to go with COMMIT; s may be nil.
func (s *threadSaves) flush(ctx context.Context, tx *sqldb.Tx) error {
	if s == nil {
		return nil
	}
	for args := s.args; len(args) > 0; {
		n := min(len(args)/saveArgs, indexRows)
		if err := tx.ExecAtCommit(ctx, saveThreadsSQL[n], args[:saveArgs*n]...); err != nil {
			return fmt.Errorf("update conversations: %w", err)
		}
		args = args[saveArgs*n:]
	}
	s.args = s.args[:0]
	return nil
}

// saveThreadsSQL[n] sets n threads' newest message and needs reply
// (threadSaves' rows), as threadState.save's UPDATE does one thread's.
var saveThreadsSQL = func() [indexRows + 1]string {
	var qs [indexRows + 1]string
	for n := 1; n <= indexRows; n++ {
		qs[n] = `UPDATE conversations SET last_message_time = v.column3, last_message_preview = v.column4,
			last_activity = v.column3, state = v.column5, last_message_seq = v.column6, awaiting_reply_since = v.column7
			FROM (` + valuesSQL(n, "TEXT", "TEXT", "BIGINT", "TEXT", "INTEGER", "BIGINT", "BIGINT") + `) AS v
			WHERE conversations.practice = v.column1 AND conversations.id = v.column2`
	}
	return qs
}()

// threadUsers is a thread's user_state rows, read when a patient message
// needs its recipients, and kept in step with the staff senders the batch
// adds as participants.
type threadUsers struct {
	known  *participants // committed participants (no statement needed)
	joined *[]string     // participants this transaction makes sure of
	// noRecipients: staff answers no recipients without reading them
	// (Store.NoRecipients).
	noRecipients bool
	loaded       bool
	muted        map[string]bool // user_name → muted
	ensured      map[string]bool // staff senders made sure of before loading
	recipients   []string        // cached staff(); nil: recompute
}

// ensure makes m's sender a participant of the thread (ensureUser), once.
func (u *threadUsers) ensure(ctx context.Context, tx *sqldb.Tx, t thread, m domain.MessageApplied) error {
	if u.loaded {
		if _, ok := u.muted[m.Sender]; ok {
			return nil
		}
	} else if u.ensured[m.Sender] {
		return nil
	}
	key := participantKey(t.practice, t.id, m.Sender)
	if !u.known.has(key) {
		if err := ensureUser(ctx, tx, t.practice, t.id, m.Sender, m.Time); err != nil {
			return err
		}
		*u.joined = append(*u.joined, key)
	}
	if u.loaded {
		u.muted[m.Sender] = false
		u.recipients = nil
		return nil
	}
	if u.ensured == nil {
		u.ensured = map[string]bool{}
	}
	u.ensured[m.Sender] = true
	return nil
}

// staff are the recipients of a patient message: every staff participant of
// the thread who has not muted it, by name. The slice must not be changed.
func (u *threadUsers) staff(ctx context.Context, tx *sqldb.Tx, t thread) ([]string, error) {
	if u.noRecipients {
		return nil, nil
	}
	if !u.loaded {
		rows, err := tx.Query(ctx, `SELECT user_name, muted FROM user_state WHERE practice = ? AND conversation_id = ?
			AND user_name LIKE 'users/%'`, t.practice, t.id)
		if err != nil {
			return nil, fmt.Errorf("read participants: %w", err)
		}
		defer rows.Close()
		u.muted = map[string]bool{}
		for rows.Next() {
			var name string
			var muted bool
			if err := rows.Scan(&name, &muted); err != nil {
				return nil, err
			}
			u.muted[name] = muted
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
		u.loaded, u.ensured = true, nil
	}
	if u.recipients == nil {
		u.recipients = make([]string, 0, len(u.muted))
		for name, muted := range u.muted {
			if !muted && strings.HasPrefix(name, "users/") {
				u.recipients = append(u.recipients, name)
			}
		}
		slices.Sort(u.recipients)
	}
	return u.recipients, nil
}

// maxParticipants bounds the participants cache (about 100 bytes each); when
// full it starts afresh.
const maxParticipants = 1 << 15

// participants remembers (practice, thread, user) triples known to have a
// user_state row, so that a staff message need not insert it again. A row
// is never deleted, so an entry never goes stale; entries are added only
// after the commit that wrote or saw them.
type participants struct {
	mu sync.Mutex
	m  map[string]struct{}
}

func participantKey(practice, id, user string) string { return practice + "\x00" + id + "\x00" + user }

func (p *participants) has(key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.m[key]
	return ok
}

func (p *participants) add(keys []string) {
	if len(keys) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil || len(p.m)+len(keys) > maxParticipants {
		p.m = make(map[string]struct{}, len(keys))
	}
	for _, k := range keys {
		p.m[k] = struct{}{}
	}
}
