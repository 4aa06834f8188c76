package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// Sends on PostgreSQL go in batches: a send puts itself in the store's
// queue; while no batch write is in flight (maxSendWrites), it writes every
// send queued by then itself (a write of sqldb's group commit), else it
// waits for the writer in flight, which takes it next: the sends that
// arrive during one batch's write and commit make the next batch. A batch is one statement (insertBatchSQL: the threads' counters each
// raised by their sends' count, the messages inserted with the seqs under
// it), so that the sends waiting at once cost one round trip inside the
// group commit instead of one each, and a send waits for one commit, not
// for its own write's turn in a lane after the others'. A batch stores
// all of its sends or none: a repeated request id (a row the insert skips)
// or any error rolls the batch back and each of its sends goes again alone
// (sendAlone, the one-send statement with its repeat lookup), so that seqs
// stay gapless and a repeat gets its own answer. When this process knows
// every thread's counter (seqCache, knownseqs.go) the batch carries its
// seqs and its statement goes with the outbox rows and COMMIT
// (insertKnown): one round trip instead of two on the sends' path.

// maxSendBatch bounds the sends of one statement.
const maxSendBatch = 64

// batchWriteTimeout bounds a batch write that no caller's context bounds
// (one a writer started for the sends queued after its own).
const batchWriteTimeout = time.Minute

// sendQueue holds the sends waiting for a write.
type sendQueue struct {
	mu      sync.Mutex
	pending []*queuedSend
	writing int // batch writes in flight (writeBatches)
	// mostWriting is the most batch writes ever in flight at once (tests).
	mostWriting atomic.Int64
	// together counts the sends stored in batches of two or more, known
	// those stored by insertKnown, and knownFailed its writes that failed
	// (tests).
	together, known, knownFailed atomic.Int64
}

// queuedSend is one send in a batch.
type queuedSend struct {
	m      domain.Message
	extras string
	evs    func(domain.Message) []domain.Event
	out    domain.Message // filled in by the batch's fn
	err    error          // the batch's outcome: nil once committed
	done   chan struct{}  // closed with err set
}

// errBatchRepeat rolls back a batch that met a repeated request id.
var errBatchRepeat = errors.New("batch met a repeated request")

// errBatchPanicked is the outcome of a batch whose write panicked.
var errBatchPanicked = errors.New("batch write panicked")

// maxSendWrites bounds the batch writes in flight at once: one, so that
// the next batch gathers while it is written and committed (group commit),
// and the other group-commit lane stays free for receipts. With two (as
// many as the lanes) each lane committed a batch of its own: at 8 senders
// ~2.4 sends a commit, and delivery's commits a message rose 0.45 → 0.85
// (BENCHMARKS.md, sendpg23 and pg24).
const maxSendWrites = 1

// sendBatched stores m in a batch with the sends queued with it; ok=false:
// not stored (the caller sends it alone).
func (s *Store) sendBatched(ctx context.Context, m domain.Message, extras string, evs func(domain.Message) []domain.Event) (domain.Message, bool, error) {
	me := &queuedSend{m: m, extras: extras, evs: evs, done: make(chan struct{})}
	q := &s.sends
	q.mu.Lock()
	q.pending = append(q.pending, me)
	write := q.writing < maxSendWrites
	if write {
		q.writing++
		if w := int64(q.writing); w > q.mostWriting.Load() {
			q.mostWriting.Store(w)
		}
	}
	q.mu.Unlock()
	if write {
		s.writeBatches(ctx)
	}
	<-me.done
	if me.err != nil {
		return domain.Message{}, false, nil
	}
	return me.out, true, nil
}

// writeBatches writes the queued sends (up to maxSendBatch) in one write
// under ctx, and tells them the outcome; if more have queued meanwhile, a
// goroutine of its own writes them next (a writer stops only with the
// queue empty, so a queued send always has a writer).
func (s *Store) writeBatches(ctx context.Context) {
	q := &s.sends
	q.mu.Lock()
	n := min(len(q.pending), maxSendBatch)
	batch := slices.Clone(q.pending[:n])
	q.pending = slices.Delete(q.pending, 0, n)
	q.mu.Unlock()
	err := errBatchPanicked // a panic in the write (sqldb carries it here): the sends go alone
	defer func() {
		finish(batch, err)
		q.mu.Lock()
		more := len(q.pending) > 0
		if !more {
			q.writing--
		}
		q.mu.Unlock()
		if more { // for the queue's sends, not for ctx's caller: its own bound
			go func() {
				ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), batchWriteTimeout)
				defer cancel()
				s.writeBatches(ctx)
			}()
		}
	}()
	err = nil
	if len(batch) > 0 {
		err = s.writeBatch(ctx, batch)
	}
	if err == nil && len(batch) > 1 {
		q.together.Add(int64(len(batch)))
	}
}

// writeBatch writes batch in one write: with its seqs when this process
// knows every thread's counter (insertKnown), else, or when that write
// fails, reading them back (insertBatch).
func (s *Store) writeBatch(ctx context.Context, batch []*queuedSend) error {
	if seqs, ok := s.seqs.plan(batch); ok {
		err := s.db.Write(ctx, func(tx *sqldb.Tx) error { return insertKnown(ctx, tx, batch, seqs) })
		if err == nil {
			s.seqs.learn(batch)
			s.sends.known.Add(int64(len(batch)))
			return nil
		}
		// A counter moved (another replica's send, a send alone) or the
		// batch met a repeated request id: written again as below, which
		// finds either, and its threads paused (knownBackoff).
		s.seqs.failed(batch)
		s.sends.knownFailed.Add(1)
	}
	err := s.db.Write(ctx, func(tx *sqldb.Tx) error { return insertBatch(ctx, tx, batch) })
	if err == nil {
		s.seqs.learn(batch)
	}
	return err
}

// finish tells batch's sends their write's outcome.
func finish(batch []*queuedSend, err error) {
	for _, b := range batch {
		b.err = err
		close(b.done)
	}
}

// insertBatch inserts batch's messages, each thread's in batch order
// under its counter, and their events; errBatchRepeat if a request id
// was sent before.
func insertBatch(ctx context.Context, tx *sqldb.Tx, batch []*queuedSend) error {
	if repeats(batch) {
		return errBatchRepeat // a request twice in one batch: each goes alone
	}
	threads, counts := threadsOf(batch)
	tp, tc, tn := make([]string, len(threads)), make([]string, len(threads)), make([]int64, len(threads))
	for i, t := range threads {
		tp[i], tc[i], tn[i] = t.practice, t.conv, counts[t]
	}
	// back[i]: how far below its thread's new last seq message i's seq is.
	left := counts
	back := make([]int64, len(batch))
	for i, b := range batch {
		t := threadKey{b.m.Practice, b.m.ConversationID}
		left[t]--
		back[i] = left[t]
	}
	c := columnsOf(batch)
	rows, err := tx.Query(ctx, insertBatchSQL, tp, tc, tn, c.practice, c.conv, back, c.patient, c.sender, c.role, c.fromPatient, c.text,
		c.extras, c.sensitive, c.status, c.created, c.delivered, c.read, c.readBy, c.reqID, c.hash, c.display)
	if err != nil {
		return fmt.Errorf("insert messages: %w", err)
	}
	defer rows.Close()
	got, n := 0, len(batch)
	for rows.Next() {
		var ord, seq int64
		if err := rows.Scan(&ord, &seq); err != nil {
			return err
		}
		if ord < 1 || ord > int64(n) {
			return fmt.Errorf("insert messages: ordinal %d of %d", ord, n)
		}
		batch[ord-1].out = batch[ord-1].m
		batch[ord-1].out.Seq = seq
		got++
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("insert messages: %w", err)
	}
	if got != n {
		return errBatchRepeat // rolls back the counters too
	}
	var evs []domain.Event
	for _, b := range batch {
		evs = append(evs, b.evs(b.out)...)
	}
	return outbox.AddAll(ctx, tx, evs)
}

// insertKnown is insertBatch when this process knows every thread's
// counter (seqCache.plan gave each send its seq): the statement needs no
// answer, so it goes with the events' INSERT and COMMIT in one network
// write (sqldb's ExecAtCommit), one round trip fewer on the send's path
// than insertBatch's. It raises each counter from the known value only: a
// counter that moved since (another replica's send, a send alone) leaves
// its thread's messages without a seq, and the NOT NULL seq fails the
// statement, as a repeated request id fails it (no ON CONFLICT here):
// nothing of the batch is written and the caller writes it again with
// insertBatch.
func insertKnown(ctx context.Context, tx *sqldb.Tx, batch []*queuedSend, seqs []int64) error {
	threads, counts := threadsOf(batch)
	tp, tc, told := make([]string, len(threads)), make([]string, len(threads)), make([]int64, len(threads))
	tnew := make([]int64, len(threads))
	for i, t := range threads {
		tp[i], tc[i] = t.practice, t.conv
	}
	for i, b := range batch {
		b.out = b.m
		b.out.Seq = seqs[i]
		t := threadKey{b.m.Practice, b.m.ConversationID}
		j, _ := slices.BinarySearchFunc(threads, t, threadKey.compare)
		if tnew[j] < seqs[i] {
			tnew[j] = seqs[i]
		}
	}
	for i, t := range threads {
		told[i] = tnew[i] - counts[t]
	}
	c := columnsOf(batch)
	if err := tx.ExecAtCommit(ctx, insertKnownSQL, tp, tc, told, tnew, c.practice, c.conv, seqs, c.patient, c.sender, c.role,
		c.fromPatient, c.text, c.extras, c.sensitive, c.status, c.created, c.delivered, c.read, c.readBy, c.reqID, c.hash, c.display); err != nil {
		return fmt.Errorf("insert messages: %w", err)
	}
	var evs []domain.Event
	for _, b := range batch {
		evs = append(evs, b.evs(b.out)...)
	}
	return outbox.AddAll(ctx, tx, evs)
}

// repeats reports whether a request id is in batch twice.
func repeats(batch []*queuedSend) bool {
	type request struct{ practice, sender, id string }
	requests := make(map[request]bool, len(batch))
	for _, b := range batch {
		r := request{b.m.Practice, b.m.Sender, b.m.RequestID}
		if requests[r] {
			return true
		}
		requests[r] = true
	}
	return false
}

// threadKey names a thread.
type threadKey struct{ practice, conv string }

func (a threadKey) compare(b threadKey) int {
	if c := strings.Compare(a.practice, b.practice); c != 0 {
		return c
	}
	return strings.Compare(a.conv, b.conv)
}

// threadsOf is batch's threads in one order, as every batch locks their
// counters, and each one's number of sends.
func threadsOf(batch []*queuedSend) ([]threadKey, map[threadKey]int64) {
	counts := map[threadKey]int64{}
	for _, b := range batch {
		counts[threadKey{b.m.Practice, b.m.ConversationID}]++
	}
	threads := make([]threadKey, 0, len(counts))
	for t := range counts {
		threads = append(threads, t)
	}
	slices.SortFunc(threads, threadKey.compare)
	return threads, counts
}

// batchColumns are a batch's messages as one array per column.
type batchColumns struct {
	practice, conv, patient, sender, role, text, extras, readBy, reqID, hash, display []string
	fromPatient, sensitive                                                            []bool
	status                                                                            []int32
	created, delivered, read                                                          []int64
}

func columnsOf(batch []*queuedSend) batchColumns {
	n := len(batch)
	c := batchColumns{
		practice: make([]string, n), conv: make([]string, n), patient: make([]string, n), sender: make([]string, n),
		role: make([]string, n), text: make([]string, n), extras: make([]string, n), readBy: make([]string, n),
		reqID: make([]string, n), hash: make([]string, n), display: make([]string, n),
		fromPatient: make([]bool, n), sensitive: make([]bool, n), status: make([]int32, n),
		created: make([]int64, n), delivered: make([]int64, n), read: make([]int64, n),
	}
	for i, b := range batch {
		m := b.m
		c.practice[i], c.conv[i], c.patient[i], c.sender[i], c.role[i], c.text[i], c.extras[i] = m.Practice, m.ConversationID, m.PatientID, m.Sender, m.SenderRole, m.Text, b.extras
		c.readBy[i], c.reqID[i], c.hash[i], c.display[i] = m.ReadBy, m.RequestID, m.ContentHash, m.SenderDisplayName
		c.fromPatient[i], c.sensitive[i], c.status[i] = m.FromPatient, m.Sensitive, int32(m.Status)
		c.created[i], c.delivered[i], c.read[i] = sqldb.Micros(m.CreateTime), sqldb.Micros(m.DeliverTime), sqldb.Micros(m.ReadTime)
	}
	return c
}

// insertBatchSQL raises each thread's counter by its sends ($1–$3) and
// inserts the messages ($4–$21, one array element each) with the seqs
// below it, returning each inserted message's ordinal and seq.
const insertBatchSQL = `WITH next AS (INSERT INTO conversation_seq (practice, conversation_id, last_seq)
		SELECT * FROM unnest(CAST($1 AS TEXT[]), CAST($2 AS TEXT[]), CAST($3 AS BIGINT[]))
		ON CONFLICT (practice, conversation_id) DO UPDATE SET last_seq = conversation_seq.last_seq + EXCLUDED.last_seq
		RETURNING practice, conversation_id, last_seq),
	m AS (SELECT * FROM unnest(CAST($4 AS TEXT[]), CAST($5 AS TEXT[]), CAST($6 AS BIGINT[]), CAST($7 AS TEXT[]),
		CAST($8 AS TEXT[]), CAST($9 AS TEXT[]), CAST($10 AS BOOLEAN[]), CAST($11 AS TEXT[]), CAST($12 AS TEXT[]),
		CAST($13 AS BOOLEAN[]), CAST($14 AS INTEGER[]), CAST($15 AS BIGINT[]), CAST($16 AS BIGINT[]), CAST($17 AS BIGINT[]),
		CAST($18 AS TEXT[]), CAST($19 AS TEXT[]), CAST($20 AS TEXT[]), CAST($21 AS TEXT[]))
		WITH ORDINALITY AS t(practice, conversation_id, back, patient_id, sender, sender_role, from_patient, text, extras,
			sensitive, status, create_time, deliver_time, read_time, read_by, request_id, content_hash, sender_display_name, ord)),
	ins AS (INSERT INTO messages (` + columns + `)
		SELECT m.practice, m.conversation_id, next.last_seq - m.back, m.patient_id, m.sender, m.sender_role, m.from_patient,
			m.text, m.extras, m.sensitive, m.status, m.create_time, m.deliver_time, m.read_time, m.read_by, m.request_id,
			m.content_hash, m.sender_display_name
		FROM m JOIN next ON next.practice = m.practice AND next.conversation_id = m.conversation_id
		ON CONFLICT (practice, sender, request_id) DO NOTHING
		RETURNING practice, sender, request_id, seq)
	SELECT m.ord, ins.seq FROM ins JOIN m ON m.practice = ins.practice AND m.sender = ins.sender AND m.request_id = ins.request_id`

// insertKnownSQL is insertKnown's statement: each thread's counter ($1,
// $2) raised from its known value ($3) to its new one ($4), and the
// messages ($5–$22) inserted with their seqs; a message whose thread's
// counter was not at the known value gets a NULL seq, which fails the
// statement (seq is NOT NULL).
const insertKnownSQL = `WITH next AS (UPDATE conversation_seq c SET last_seq = t.last_seq
		FROM unnest(CAST($1 AS TEXT[]), CAST($2 AS TEXT[]), CAST($3 AS BIGINT[]), CAST($4 AS BIGINT[]))
			AS t(practice, conversation_id, known, last_seq)
		WHERE c.practice = t.practice AND c.conversation_id = t.conversation_id AND c.last_seq = t.known
		RETURNING c.practice, c.conversation_id),
	m AS (SELECT * FROM unnest(CAST($5 AS TEXT[]), CAST($6 AS TEXT[]), CAST($7 AS BIGINT[]), CAST($8 AS TEXT[]),
		CAST($9 AS TEXT[]), CAST($10 AS TEXT[]), CAST($11 AS BOOLEAN[]), CAST($12 AS TEXT[]), CAST($13 AS TEXT[]),
		CAST($14 AS BOOLEAN[]), CAST($15 AS INTEGER[]), CAST($16 AS BIGINT[]), CAST($17 AS BIGINT[]), CAST($18 AS BIGINT[]),
		CAST($19 AS TEXT[]), CAST($20 AS TEXT[]), CAST($21 AS TEXT[]), CAST($22 AS TEXT[]))
		AS t(practice, conversation_id, seq, patient_id, sender, sender_role, from_patient, text, extras,
			sensitive, status, create_time, deliver_time, read_time, read_by, request_id, content_hash, sender_display_name))
	INSERT INTO messages (` + columns + `)
	SELECT m.practice, m.conversation_id, CASE WHEN next.practice IS NOT NULL THEN m.seq END, m.patient_id, m.sender,
		m.sender_role, m.from_patient, m.text, m.extras, m.sensitive, m.status, m.create_time, m.deliver_time, m.read_time,
		m.read_by, m.request_id, m.content_hash, m.sender_display_name
	FROM m LEFT JOIN next ON next.practice = m.practice AND next.conversation_id = m.conversation_id`
