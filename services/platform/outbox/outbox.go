// Package outbox is the transactional outbox: a service writes its event into
// its own "outbox" table in the same transaction as the change, and a Relay
// publishes the rows to JetStream with Nats-Msg-Id = event id (so a retry is
// dropped by the stream's duplicate window) and deletes each row after its
// PubAck. The database is the system of record; JetStream only carries events.
//
// The relay wakes on the commit of a transaction that wrote outbox rows
// (sqldb signal Topic) and otherwise looks once per Poll; an idle relay
// commits nothing. See Relay for how several PostgreSQL replicas share one
// outbox. On SQLite the commit also hands the rows it wrote to the relay, in
// memory, so that it publishes them without reading them back (handoff.go);
// on PostgreSQL their payloads, so that it reads the rows without them
// (payloads.go).
//
// Each service's migrations create the table:
//
//	SQLite:   outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
//	          subject TEXT NOT NULL, payload BLOB NOT NULL, created_at BIGINT NOT NULL,
//	          traceparent TEXT)
//	Postgres: the same with seq BIGSERIAL and payload BYTEA.
//
// The services of the send path (delivery, conversation) make the id plain
// TEXT NOT NULL, without the UNIQUE index (SQLite sqlite12, PostgreSQL dist19): no statement
// reads a row by id and ids are fresh per event, so the index was a b-tree
// insert per event written and a delete per event published. A repeated id
// could only be among the unpublished rows (deleted within a second of
// their PubAck), which the stream's duplicate window drops, and consumers
// are idempotent by event id. On SQLite the writer takes the seqs (AddAll,
// sqldb.Tx.Seqs: a counter in memory that starts after the table's highest
// seq, or its sqlite_sequence row), so within a process a seq is never taken
// twice, even after the relay emptied the table, which the relay's
// "published up to" mark and the hand-off's "next seq" rule rely on; the
// relay makes the counter start before it publishes the first rows it
// finds (a previous process's), so that it starts above them.
// AUTOINCREMENT, which also wrote the sqlite_sequence row in every commit
// (a WAL frame), is then not needed: delivery's and conversation's outboxes
// are without it (wal16). The relay works with either table.
//
// traceparent is the W3C trace context of the transaction that wrote the row
// (NULL when tracing is off): the relay publishes the event with it as the
// "traceparent" NATS header, so the event's consumers continue the trace of
// the request that caused it (package telemetry).
package outbox

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/clinicchat/clinicchat/services/platform/eventtype"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// Event is one event to write with a change: its id (EventMeta.id, also the
// Nats-Msg-Id), its subject and its payload. Domains name it as
// eventtype.Event, which links no adapter.
type Event = eventtype.Event

// AddAll writes events into the outbox inside tx (on SQLite with the seqs
// the writer's counter gives them, insertSQLite): one INSERT for up to
// insertRows events (a statement is a round trip and most of a small
// statement's cost on PostgreSQL; a send writes two or three events). On
// PostgreSQL the INSERTs go with the transaction's COMMIT, in its last round
// trip (sqldb.Tx.ExecAtCommit): after the transaction's other statements,
// under every lock it took, so a writer that locks before AddAll still
// orders its rows (see Relay); an INSERT that fails fails the write.
func AddAll(ctx context.Context, tx *sqldb.Tx, events []Event) error {
	return addAll(ctx, tx, events, true)
}

// addAll is AddAll; atCommit=false runs the INSERTs at once on PostgreSQL
// too (tests: a row whose seq is taken well before its commit).
func addAll(ctx context.Context, tx *sqldb.Tx, events []Event, atCommit bool) error {
	if len(events) == 0 {
		return nil
	}
	var traceparent any // NULL unless ctx is traced
	if tp := telemetry.Traceparent(ctx); tp != "" {
		traceparent = tp
	}
	now := time.Now().UnixMicro()
	nowArg := any(now) // boxed once: every row's created_at
	// The rows go to the relay with the commit: on SQLite in full
	// (handoff.go), on PostgreSQL their payloads (payloads.go).
	handing := tx.Handing(Topic)
	args := make([]any, 0, 5*min(len(events), insertRows))
	for len(events) > 0 {
		n := min(len(events), insertRows)
		args = args[:0]
		var rows []row
		if handing {
			rows = make([]row, n)
		}
		for i, e := range events[:n] {
			payload, err := proto.Marshal(e.Msg)
			if err != nil {
				return fmt.Errorf("marshal event %s: %w", e.Subject, err)
			}
			args = append(args, e.ID, e.Subject, payload, nowArg, traceparent)
			if handing {
				rows[i] = row{id: e.ID, subject: e.Subject, payload: payload, created: now}
				if tp, ok := traceparent.(string); ok {
					rows[i].traceparent = sql.NullString{String: tp, Valid: true}
				}
			}
		}
		if tx.Dialect() == sqldb.Postgres {
			var err error
			if atCommit {
				err = tx.ExecAtCommit(ctx, insertSQL[n], args...)
			} else {
				_, err = tx.Exec(ctx, insertSQL[n], args...)
			}
			if err != nil {
				return fmt.Errorf("insert outbox: %w", err)
			}
			if handing {
				tx.Hand(Topic, rows)
			}
			events = events[n:]
			continue
		}
		first, err := insertSQLite(ctx, tx, n, args)
		if err != nil {
			return fmt.Errorf("insert outbox: %w", err)
		}
		if handing {
			// The writer is SQLite's only one: the statement's rows took
			// the seqs from first, one after another.
			for i := range rows {
				rows[i].seq = first + int64(i)
			}
			tx.Hand(Topic, rows)
		}
		events = events[n:]
	}
	tx.Signal(Topic)
	return nil
}

// insertRows bounds the rows of one INSERT, and so the number of distinct
// statements the statement caches hold for it.
const insertRows = 16

// insertSQL[n] inserts n rows (seq order is the order of the VALUES list:
// both databases assign a multi-row INSERT's serial values in list order).
var insertSQL = multiInsert(`id, subject, payload, created_at, traceparent`, 5)

// multiInsert is the outbox INSERT of columns (width of them) for each row
// count from 1 to insertRows.
func multiInsert(columns string, width int) [insertRows + 1]string {
	row := `(?` + strings.Repeat(`, ?`, width-1) + `)`
	var qs [insertRows + 1]string
	for n := 1; n <= insertRows; n++ {
		qs[n] = `INSERT INTO outbox (` + columns + `) VALUES ` + row + strings.Repeat(`, `+row, n-1)
	}
	return qs
}

// insertSQLite inserts n rows (args: insertSQL's five values per row) with
// the next n seqs of the writer's counter (sqldb.Tx.Seqs), and returns the
// first. SQLite's own choice for a table without AUTOINCREMENT, one more
// than the highest seq in the table, would go back down once the relay has
// deleted every row, below the seq it published last, and it would never
// look at those rows; AUTOINCREMENT instead writes its sqlite_sequence row,
// a WAL frame per commit. A seq the counter does not know of (a row written
// by another statement) makes the INSERT fail: the counter then starts
// again after the table's highest seq, once.
func insertSQLite(ctx context.Context, tx *sqldb.Tx, n int, args []any) (int64, error) {
	vals := make([]any, 0, n*6)
	for again := true; ; again = false {
		first, err := tx.Seqs(ctx, Topic, n, highestSeq)
		if err != nil {
			return 0, err
		}
		vals = vals[:0]
		for i := range n {
			vals = append(vals, first+int64(i))
			vals = append(vals, args[5*i:5*i+5]...)
		}
		_, err = tx.Exec(ctx, seqInsertSQL[n], vals...)
		if err == nil || !again || !sqldb.IsUniqueViolation(err) {
			return first, err
		}
		tx.ResetSeqs(Topic)
	}
}

// highestSeq is the highest seq the SQLite outbox holds or, where the table
// has AUTOINCREMENT (its sqlite_sequence row), ever held.
func highestSeq(ctx context.Context, tx *sqldb.Tx) (int64, error) {
	var hi int64
	// sqlite_sequence exists only in a database that has (or had) an
	// AUTOINCREMENT table: asked for first, so that a missing one is not
	// told from an error's text.
	var sequences int
	if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' AND name = 'sqlite_sequence'`).Scan(&sequences); err != nil {
		return 0, err
	}
	if sequences == 0 {
		err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(seq), 0) FROM outbox`).Scan(&hi)
		return hi, err
	}
	err := tx.QueryRow(ctx, `SELECT MAX(COALESCE((SELECT MAX(seq) FROM outbox), 0),
		COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0))`).Scan(&hi)
	return hi, err
}

// seqInsertSQL[n] is insertSQL[n] with the seqs given (SQLite).
var seqInsertSQL = multiInsert(`seq, id, subject, payload, created_at, traceparent`, 6)

// Add writes one event into the outbox inside tx.
func Add(ctx context.Context, tx *sqldb.Tx, id, subject string, msg proto.Message) error {
	return AddAll(ctx, tx, []Event{{ID: id, Subject: subject, Msg: msg}})
}

// Topic is the sqldb signal of a transaction that wrote outbox rows: its
// commit wakes the relay (and no other commit does).
const Topic = "outbox"

// Relay publishes outbox rows to JetStream.
//
// PostgreSQL, where several replicas relay one database: a round that finds
// the outbox empty is one read and nothing else. Otherwise the relay takes
// the outbox's advisory lock (one per schema) on a connection of its own,
// reads a batch in seq order, publishes it outside any transaction, and
// deletes the acknowledged rows: one relay publishes at a time, in seq
// order, so events keep their order per conversation whichever replica
// wrote them, and no transaction or row lock is open while NATS is slow.
// While rows keep coming (a wake-up within Linger) the relay keeps the lock,
// and each further round is one statement that reads the next batch past
// the rows already published, and deletes those every deleteRows rows or
// deleteAfter (a durable commit, not one per round); once no wake-up came
// within Linger, a round that finds nothing more deletes the rest and
// releases the lock. While it holds the lock its session has
// idle_session_timeout = Lease: a frozen relay loses its session, and with
// it the lock, after Lease and another replica publishes the rows again
// (JetStream drops the duplicates by Nats-Msg-Id within its duplicate
// window; a crashed relay's session ends at once). Another replica's rows
// wait for the holder's next round, at most Linger.
//
// Order on PostgreSQL. A row's seq is taken by its INSERT (nextval, not
// transactional), and transactions commit in any order, so the rows a round
// reads are committed rows in seq order with gaps: a row whose transaction
// took a lower seq and commits later is read by a later round (there is no
// cursor to pass it: a round reads every row not yet published) and goes out
// after rows with a higher seq. Rows are never skipped, only reordered, and
// only against rows their writer did not wait for. Events that must keep
// their order (a thread's) get it from their writers: each takes a row lock
// (a delivery send the thread's message counter row, a preferences change
// the patient row FOR UPDATE, a conversation change the row it updates)
// before it writes its outbox rows and keeps it until it commits, so a
// later writer of the same thing takes a higher seq and commits after it; any
// snapshot that sees the later row sees the earlier one, and the relay sends
// it first (TestConcurrentSendsReachTheStreamInSeqOrder in the delivery store
// fails as soon as the seq is taken before the lock). A writer whose events
// need order must keep AddAll after its locking statement.
type Relay struct {
	db    *sqldb.DB
	pub   *publisher // sends the rows to JetStream and collects their PubAcks
	log   *zap.Logger
	kick  chan struct{}
	Poll  time.Duration // how often to look without a kick, for rows of other replicas (default 1s)
	Batch int           // rows per round (default 256)
	// Lease bounds how long a relay that stops responding keeps the
	// PostgreSQL outbox lock (default 30s; keep it well above AckWait, or
	// a slow relay loses the lock and its rows are published twice, the
	// second time dropped as duplicates).
	Lease time.Duration
	// AckWait bounds the wait for a publish's acknowledgement (default
	// DefaultAckWait).
	AckWait time.Duration
	// Linger is how long a PostgreSQL relay keeps the outbox lock after a
	// round that published rows, waiting for the next wake-up (default
	// DefaultLinger). Keep it well below Lease.
	Linger time.Duration
	// Pace is the least time from one PostgreSQL round's read to the
	// next one's while the relay keeps the outbox lock (default
	// DefaultPace; negative: none). See DefaultPace.
	Pace time.Duration

	// held is the PostgreSQL outbox lock between rounds (nil when not held).
	held *pgLock
	// seqsKnown: the SQLite writer's seq counter was read before this
	// relay's first round (round).
	seqsKnown bool

	// afterClaim runs after a PostgreSQL round has read its batch (tests).
	afterClaim func(ctx context.Context)
	// waves makes every round go in waves (benchmarks: the cost of
	// closing the frozen relay's gap, see publish).
	waves bool

	// SQLite: rows up to published are on JetStream; they are deleted in
	// one statement once a second or every 1024 rows, not after every round
	// (a delete is a durable commit: an fsync). A crash before the delete
	// republishes them, and JetStream drops them as duplicates. Under Run
	// the delete is a goroutine's of its own (deletes takes the highest
	// seq to delete up to), so the rounds behind it do not wait for its
	// commit: inside a round it held back every event committed meanwhile
	// for the length of an fsync, once a second (BENCHMARKS.md, stream9).
	published, undeleted int64
	lastDelete           time.Time
	deletes              chan int64
	// publishedMark is published, for the backlog metric (read at scrape).
	publishedMark atomic.Int64
	// lingering: Run waits, holding the PostgreSQL outbox lock, for a
	// wake-up (no round, no statement in flight; tests).
	lingering atomic.Bool
	// pacing: Run waits, woken, for the rest of Pace (tests).
	pacing atomic.Bool

	stats relayStats

	// last is, per stream, the sequence of the last message on it, while
	// the relay knows it exactly (see publish); again is set by a round
	// that left rows JetStream refused as out of turn without a failure
	// (behind a duplicate), for the next round to go at once.
	last  map[string]uint64
	again bool
	// claimed is when the PostgreSQL round read its batch: the lock is
	// the relay's for Lease after it (zero on SQLite).
	claimed time.Time

	// SQLite: hand is the queue of rows handed over by their commits
	// (handoff.go). readTable is set while the table may hold rows past
	// published that the queue lacks (at start, after a full batch read
	// from the table, a failed publish or rows taken and not sent): a
	// round that finds nothing next in the queue reads the table then,
	// and also when poll is set (Run's ticker, Flush).
	hand      *handoff
	readTable bool
	poll      bool
	// PostgreSQL: payloads are the payloads handed over by their commits
	// (payloads.go).
	payloads *payloads

	// streams remembers natsx.StreamOf by "<prefix>.<service>" (streamOf).
	streams map[string]string
	// unbatched holds the streams that refused a fast batch, until when
	// their rows go one by one (noBatch); noBatches sends every row on its
	// own (tests, benchmarks: the cost without batches).
	unbatched map[string]time.Time
	noBatches bool
}

// NewRelay returns a relay that wakes after every commit of db that wrote
// outbox rows.
func NewRelay(db *sqldb.DB, js jetstream.JetStream, log *zap.Logger) *Relay {
	r := &Relay{db: db, pub: newPublisher(js), log: log, kick: make(chan struct{}, 1), Poll: time.Second, Batch: 256,
		Lease: 30 * time.Second, last: map[string]uint64{}, stats: newRelayStats()}
	if db.Dialect() == sqldb.SQLite {
		r.hand, r.readTable = &handoff{max: handoffRows}, true
		db.OnHand(Topic, r.hand.push)
	} else {
		r.payloads = newPayloads(handoffRows)
		db.OnHand(Topic, r.payloads.push)
	}
	db.OnSignal(Topic, r.Kick)
	return r
}

// Kick wakes the relay without blocking.
func (r *Relay) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// DefaultAckWait is how long the relay waits for a publish's
// acknowledgement before it sends the row again (a duplicate, should it
// have been stored after all, is dropped by its Nats-Msg-Id). A publish
// the stream's dying leader took gets no answer at all: every event behind
// it waits this long, so it is short (it was 10 s, which was most of the
// recipients' ~10 s lag after a NATS server died); acknowledgements take
// milliseconds.
const DefaultAckWait = 3 * time.Second

// DefaultLinger is Relay.Linger's default: at a few sends a second every
// round takes and releases the lock, as before; under load the relay keeps
// it, and a round is one statement instead of five.
const DefaultLinger = 20 * time.Millisecond

// DefaultPace is Relay.Pace's default. Every commit that writes outbox
// rows wakes the relay, and under load each wake-up was a round of its own:
// a statement that reads the next rows (and deletes the published ones),
// a publish and its acknowledgements for a few rows, then the same again
// in every consumer of those events (a fan-out, a projection transaction,
// an audit batch). A round that follows another within Pace waits for the
// rest of it, so the rows of the commits meanwhile go in one round: at
// most one round per Pace, a few rows more each. A wake-up after a quiet
// spell (no round within Pace) is not delayed, and the relay releases the
// outbox lock after Linger without one, so it costs an event at most
// Pace on its way, and only while events keep coming. Measured on the
// distributed stack (BENCHMARKS.md, Dec 4, seventh session), 8 senders:
// PostgreSQL statements a message 3.0 → 2.3, commits 1.1 → 0.8, the
// stack's and PostgreSQL's CPU a message 1.05 → 0.89 ms, and 14 % more
// sends a second in interleaved runs; at 32 senders, whose rounds were
// big already, the same within the noise.
const DefaultPace = 5 * time.Millisecond

// maxBackoff bounds the wait between failed rounds. Failures are mostly a
// stream with no leader for the seconds of an election (4-9 s after its
// leader dies; its publishes fail at once with "no response from stream"):
// a longer wait would hold every event back for up to that long after the
// new leader is up.
const maxBackoff = time.Second

// Run publishes until ctx ends. Errors (NATS down) are retried with backoff.
func (r *Relay) Run(ctx context.Context) error {
	t := time.NewTicker(r.Poll)
	defer t.Stop()
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	defer linger.Stop()
	defer r.release(ctx)
	defer r.pub.close()
	if r.db.Dialect() != sqldb.Postgres {
		r.deletes = make(chan int64, 1)
		stop, done := make(chan struct{}), make(chan struct{})
		go func() { defer close(done); r.deleter(ctx, stop) }()
		defer func() { close(stop); <-done; r.deletes = nil }()
	}
	backoff := 100 * time.Millisecond
	lingered := false // the last wait for a wake-up ran out
	for {
		n, err := r.round(ctx, lingered)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			if rerr := r.release(ctx); rerr != nil {
				err = errors.Join(err, rerr)
			}
			r.log.Warn("outbox relay: publish failed; will retry", zap.Error(err), zap.Duration("backoff", backoff))
			if !sleep(ctx, backoff) {
				return nil
			}
			backoff = min(backoff*2, maxBackoff)
			continue
		case n >= r.Batch || r.again:
			backoff = 100 * time.Millisecond
			continue // more waiting
		}
		backoff = 100 * time.Millisecond
		if r.held != nil && (n > 0 || !lingered) {
			// Keep the lock for the next wake-up (a round woken by a
			// commit whose rows the last round took finds nothing);
			// without one, a last round deletes what the previous one
			// published and takes the other replicas' rows.
			linger.Reset(r.linger())
			r.lingering.Store(true)
			select {
			case <-ctx.Done():
				return nil
			case <-r.kick:
				linger.Stop()
				lingered = false
				// Under load, rounds come no closer than Pace: the rows
				// committed meanwhile wait for the next one together.
				if d := r.pace() - time.Since(r.claimed); d > 0 {
					r.pacing.Store(true)
					slept := sleep(ctx, d)
					r.pacing.Store(false)
					if !slept {
						return nil
					}
				}
			case <-linger.C:
				lingered = true
			}
			r.lingering.Store(false)
			continue
		}
		lingered = false
		if err := r.release(ctx); err != nil {
			r.log.Warn("outbox relay: release failed", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.kick:
		case <-t.C:
			r.poll = true
		}
	}
}

type row struct {
	seq         int64
	id          string
	subject     string
	payload     []byte
	traceparent sql.NullString
	created     int64 // when the row was written, µs since the epoch
	// handed is when its commit handed it to the relay (SQLite's
	// hand-off; zero for rows read from the table).
	handed time.Time
}

// Flush publishes one batch and returns how many rows it published. On
// PostgreSQL it takes the outbox lock and releases it before it returns.
func (r *Relay) Flush(ctx context.Context) (int, error) {
	r.poll = true
	n, err := r.round(ctx, true)
	if rerr := r.release(ctx); rerr != nil {
		err = errors.Join(err, rerr)
	}
	return n, err
}

// round publishes one batch; on PostgreSQL it keeps the outbox lock (release
// gives it up), and last asks it to delete every row published so far.
func (r *Relay) round(ctx context.Context, last bool) (int, error) {
	r.again = false
	if r.db.Dialect() == sqldb.Postgres {
		return r.roundPostgres(ctx, last)
	}
	rows, err := r.next(ctx, r.published, r.Batch, r.poll)
	if err != nil {
		return 0, err
	}
	if len(rows) > 0 && !r.seqsKnown {
		// The writer's seq counter starts after the table's highest seq
		// the first time it is taken from. Take it now, before this relay
		// publishes and deletes the first rows it found (a previous
		// process's): taken after, it would start below the seqs this
		// relay has marked published, and the relay would skip (and then
		// delete) the next rows unpublished. (A round that finds nothing
		// publishes and deletes nothing: it need not, and commits nothing.)
		if err := r.db.Write(ctx, func(tx *sqldb.Tx) error {
			_, err := tx.Seqs(ctx, Topic, 0, highestSeq)
			return err
		}); err != nil {
			r.readTable = true // the rows taken are in the table
			return 0, fmt.Errorf("outbox: %w", err)
		}
		r.seqsKnown = true
	}
	r.poll = false
	// Rows acknowledged after one that failed are sent again next round
	// (behind it) and dropped as duplicates: published marks the prefix.
	rows, done, prefix, perr := r.publish(ctx, rows)
	if prefix < len(rows) || perr != nil {
		r.readTable = true // the rest (and rows taken but not sent) is in the table only
	}
	if prefix > 0 {
		r.published = rows[prefix-1].seq
		r.undeleted += int64(prefix)
		r.publishedMark.Store(r.published)
	}
	if r.undeleted > 0 && (r.undeleted >= 1024 || time.Since(r.lastDelete) >= time.Second) {
		if r.deletes != nil {
			// Run's deleter: only the latest mark matters (one producer).
			select {
			case <-r.deletes:
			default:
			}
			r.deletes <- r.published
		} else if err := r.deleteUpTo(ctx, r.published); err != nil {
			return len(done), err
		}
		r.undeleted, r.lastDelete = 0, time.Now()
	}
	return len(done), perr
}

// loadSQL reads the SQLite outbox's next rows past a seq.
const loadSQL = `SELECT seq, id, subject, payload, traceparent, created_at FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?`

// next returns up to n of the SQLite outbox's rows past seq after, in seq
// order: from the hand-off queue when it has the next ones, else from the
// table if it may hold rows the queue lacks (readTable, or the queue says
// so), or if poll. Rows committed later are not missed: their commit hands
// them over and wakes the relay.
func (r *Relay) next(ctx context.Context, after int64, n int, poll bool) ([]row, error) {
	if r.hand != nil {
		rows, ok := r.hand.take(after, n)
		if len(rows) > 0 || (ok && !r.readTable && !poll) {
			return rows, nil
		}
	}
	rows, err := load(ctx, r.db, loadSQL, after, n)
	if err != nil {
		return nil, err
	}
	r.stats.loaded.Add(int64(len(rows)))
	// A read of less than n rows has every row committed before it; the
	// later ones are in the queue, or the queue knows it lost some.
	r.readTable = len(rows) == n
	return rows, nil
}

// deleteUpTo deletes the SQLite outbox rows up to seq (published).
func (r *Relay) deleteUpTo(ctx context.Context, seq int64) error {
	_, err := r.db.Exec(ctx, `DELETE FROM outbox WHERE seq <= ?`, seq)
	return err
}

// deleter deletes the published SQLite rows the rounds hand it (round)
// until stop closes, and then what is still to delete. A failed delete is
// tried again with the next mark, or at stop.
func (r *Relay) deleter(ctx context.Context, stop <-chan struct{}) {
	var pending int64
	for {
		select {
		case seq := <-r.deletes:
			pending = max(pending, seq)
			if err := r.deleteUpTo(ctx, pending); err != nil {
				if ctx.Err() == nil {
					r.log.Warn("outbox relay: delete of published rows failed; will retry", zap.Error(err))
				}
				continue
			}
			pending = 0
		case <-stop:
			select {
			case seq := <-r.deletes:
				pending = max(pending, seq)
			default:
			}
			if pending > 0 {
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				if err := r.deleteUpTo(dctx, pending); err != nil {
					r.log.Warn("outbox relay: delete of published rows failed", zap.Error(err))
				}
				cancel()
			}
			return
		}
	}
}

// lockKey is the first half of the outbox's advisory lock; the second is a
// hash of the schema, so services sharing a database do not share the lock.
const lockKey = 7342002

// pgLock is the PostgreSQL outbox lock held between rounds: the session
// that holds it, and the rows published and not yet deleted. They are
// deleted by a later round's statement once there are deleteRows of them
// or the oldest is deleteAfter old (a delete is a durable commit: a WAL
// flush), and always before the lock is released.
type pgLock struct {
	conn      *sql.Conn
	published []int64
	since     time.Time // when the oldest of published was acknowledged
}

// deleteRows and deleteAfter bound the published rows a PostgreSQL relay
// keeps before it deletes them (each round's read steps over them).
const (
	deleteRows  = 128
	deleteAfter = 100 * time.Millisecond
)

// PostgreSQL statements of a round. probeSQL looks for a row by the
// primary key's index, from its lowest seq: a scan of the table's pages
// (its plan without the ORDER BY) stepped over every row deleted since
// the last vacuum, ~160 pages a call in conversation's busy outbox
// (BENCHMARKS.md, pg17), where the index scan marks the dead entries it
// passes and the next probe skips them. claimSQL deletes published rows ($1)
// and reads the next batch past every published row ($2, a superset of
// $1: the DELETE in WITH is not visible to the SELECT's snapshot). Without
// rows to delete it commits nothing durable.
const (
	probeSQL = `SELECT 1 FROM outbox ORDER BY seq LIMIT 1`
	lockSQL  = `SELECT pg_advisory_lock($1, hashtext(current_schema())), set_config('idle_session_timeout', $2, false)`
	claimSQL = `WITH done AS (DELETE FROM outbox WHERE seq = ANY($1)) SELECT seq, id, subject, payload, traceparent, created_at FROM outbox WHERE seq <> ALL($2) ORDER BY seq LIMIT $3`
	// claimBareSQL is claimSQL without the payloads (the relay holds them,
	// payloads.go); payloadsSQL reads those it lacks.
	claimBareSQL = `WITH done AS (DELETE FROM outbox WHERE seq = ANY($1)) SELECT seq, id, subject, traceparent, created_at FROM outbox WHERE seq <> ALL($2) ORDER BY seq LIMIT $3`
	payloadsSQL  = `SELECT seq, payload FROM outbox WHERE seq = ANY($1)`
	deleteSQL    = `DELETE FROM outbox WHERE seq = ANY($1)`
	unlockSQL    = `SELECT pg_advisory_unlock($1, hashtext(current_schema())), set_config('idle_session_timeout', '0', false)`
)

func (r *Relay) roundPostgres(ctx context.Context, last bool) (int, error) {
	if r.held == nil {
		var one int
		switch err := r.db.QueryRow(ctx, probeSQL).Scan(&one); {
		case errors.Is(err, sql.ErrNoRows):
			return 0, nil // idle: one read, no commit of ours
		case err != nil:
			return 0, fmt.Errorf("outbox: %w", err)
		}
		conn, err := r.db.Raw().Conn(ctx)
		if err != nil {
			return 0, fmt.Errorf("outbox: %w", err)
		}
		if _, err := conn.ExecContext(ctx, lockSQL, lockKey, strconv.FormatInt(r.lease().Milliseconds(), 10)); err != nil {
			discard(conn)
			return 0, fmt.Errorf("outbox lock: %w", err)
		}
		r.held = &pgLock{conn: conn}
		// Another replica may have published since this one last held
		// the lock: the streams' last sequences are learnt again.
		clear(r.last)
	}
	h := r.held
	// NULL would match no row of seq <> ALL: empty arrays, not nil.
	published, del := append([]int64{}, h.published...), []int64{}
	if len(published) > 0 && (last || len(published) >= deleteRows || time.Since(h.since) >= deleteAfter) {
		del = published
	}
	rows, err := r.claim(ctx, h.conn, del, published)
	if err != nil {
		r.drop() // the rows of the last round are published again, as duplicates
		return 0, fmt.Errorf("load outbox: %w", err)
	}
	r.claimed = time.Now()
	if len(del) > 0 {
		h.published = h.published[:0]
	}
	if len(rows) == 0 {
		return 0, nil
	}
	if r.afterClaim != nil {
		r.afterClaim(ctx)
	}
	// Every acknowledged row is deleted, also those after a row that
	// failed: a row is only stored behind the earlier rows of its subject
	// (publish), so what stays is the failed rows and those behind them.
	_, done, _, perr := r.publish(ctx, rows)
	if len(h.published) == 0 {
		h.since = time.Now()
	}
	h.published = append(h.published, done...)
	return len(done), perr
}

// claim deletes the published rows del and reads the next batch past
// published, with the payloads handed over (payloads.go): when it holds
// none, the claim reads them; else it reads the rows without and then the
// payloads of the rows it lacks, in one more statement. A row deleted in
// between (only a published row is deleted: by a relay that had lost its
// lease) is left out.
func (r *Relay) claim(ctx context.Context, conn *sql.Conn, del, published []int64) ([]row, error) {
	if r.payloads == nil || r.payloads.empty() {
		rs, err := conn.QueryContext(ctx, claimSQL, del, published, r.Batch)
		if err != nil {
			return nil, err
		}
		rows, err := scan(rs)
		r.stats.loaded.Add(int64(len(rows)))
		return rows, err
	}
	rs, err := conn.QueryContext(ctx, claimBareSQL, del, published, r.Batch)
	if err != nil {
		return nil, err
	}
	rows, err := scanRows(rs, false)
	if err != nil {
		return nil, err
	}
	missing := r.payloads.fill(rows)
	if len(missing) == 0 {
		return rows, nil
	}
	rs, err = conn.QueryContext(ctx, payloadsSQL, missing)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	bySeq := make(map[int64][]byte, len(missing))
	for rs.Next() {
		var seq int64
		var p []byte
		if err := rs.Scan(&seq, &p); err != nil {
			return nil, err
		}
		bySeq[seq] = p
	}
	if err := rs.Err(); err != nil {
		return nil, err
	}
	r.stats.loaded.Add(int64(len(bySeq)))
	out, m := rows[:0], 0
	for _, x := range rows {
		if m < len(missing) && missing[m] == x.seq { // both in seq order
			m++
			p, ok := bySeq[x.seq]
			if !ok {
				continue
			}
			x.payload = p
		}
		out = append(out, x)
	}
	return out, nil
}

// release deletes the rows the last round published and gives the outbox
// lock up, if the relay holds it. It runs even when ctx has ended.
func (r *Relay) release(ctx context.Context) (err error) {
	h := r.held
	if h == nil {
		return nil
	}
	r.held = nil
	clear(r.last)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if len(h.published) > 0 {
		if _, err := h.conn.ExecContext(ctx, deleteSQL, h.published); err != nil {
			// Published but not deleted: the next round publishes them
			// again and JetStream drops the duplicates.
			discard(h.conn) // the session (and with it the lock) is gone or going
			return fmt.Errorf("delete outbox rows: %w", err)
		}
	}
	if _, err := h.conn.ExecContext(ctx, unlockSQL, lockKey); err != nil {
		discard(h.conn)
		return fmt.Errorf("outbox unlock: %w", err)
	}
	return h.conn.Close()
}

// drop gives the outbox lock up by ending its session.
func (r *Relay) drop() {
	if r.held != nil {
		discard(r.held.conn)
		r.held = nil
		clear(r.last)
	}
}

// linger is Linger or its default.
func (r *Relay) linger() time.Duration {
	if r.Linger <= 0 {
		return DefaultLinger
	}
	return r.Linger
}

// sleep waits d, or less if ctx ends first: false then.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// pace is Pace or its default (0: none).
func (r *Relay) pace() time.Duration {
	switch {
	case r.Pace < 0:
		return 0
	case r.Pace == 0:
		return DefaultPace
	}
	return r.Pace
}

// lease is Lease or its default.
func (r *Relay) lease() time.Duration {
	if r.Lease <= 0 {
		return 30 * time.Second
	}
	return r.Lease
}

// discard closes conn instead of returning it to the pool.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}

func load(ctx context.Context, q sqldb.Querier, query string, args ...any) ([]row, error) {
	rs, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("load outbox: %w", err)
	}
	return scan(rs)
}

// scan reads claimSQL's (and the SQLite load's) rows.
func scan(rs *sql.Rows) ([]row, error) { return scanRows(rs, true) }

// scanRows reads rows of seq, id, subject, payload (withPayload; without
// it claimBareSQL's rows), traceparent and created_at.
func scanRows(rs *sql.Rows, withPayload bool) ([]row, error) {
	defer rs.Close()
	var out []row
	var x row // each row is scanned into x, then copied out
	dest := []any{&x.seq, &x.id, &x.subject, &x.payload, &x.traceparent, &x.created}
	if !withPayload {
		dest = slices.Delete(dest, 3, 4)
	}
	for rs.Next() {
		x = row{}
		if err := rs.Scan(dest...); err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, rs.Err()
}

// publish sends rows and returns the seqs acknowledged, and how many rows
// at the head of rows those are (the acknowledged prefix).
//
// Events of one subject (one thread's) must be stored in the order of their
// rows, and a publish that fails may or may not be stored: while the
// server leading the stream dies and another is elected, a publish gets no
// response, or is taken by the dying leader and never committed, while a
// later one reaches the new leader and is stored. Had that later row of the
// same subject been in flight, it would now be stored ahead of the first,
// which the next round sends again behind it.
//
// So a later row must either wait for the earlier one's acknowledgement
// (publishWaves: a wave of the first row of every subject, pipelined, then
// the second row of every subject, …: as many sequential round trips as the
// busiest subject has rows in the batch, ~16 for 128 rows of 8 busy
// threads), or carry a condition under which JetStream stores it only
// behind the earlier one (publishChained: every row pipelined, one round
// trip per batch). The condition is Nats-Expected-Last-Sequence: the relay
// is its stream's only writer (each stream holds one service's subjects,
// and only one relay publishes a service's outbox: on PostgreSQL the holder
// of the outbox lock), so once it knows the stream's last sequence L, its
// k-th row of the batch for that stream is stored at L+k+1 if every row
// before it was, and it sends it expecting L+k. If an earlier row was lost,
// or rejected, the stream's last sequence is below L+k when the later row
// is checked (a rejected row takes no sequence), and JetStream rejects it
// rather than store it ahead: the round ends there and the next one sends
// the rows again from the first that was not acknowledged. The leader
// checks the expectation before it proposes the message, against the
// sequence of its last proposal (in flight ones included), so this holds
// in a cluster too and across a change of leader.
//
// The alternatives do not hold up (nats-server 2.15.2):
//   - Nats-Expected-Last-Subject-Sequence (per subject) is refused by a
//     clustered stream while an earlier message of the subject is in flight
//     ("wrong last sequence", code 10164): a subject's rows could still not
//     be pipelined, which is the whole point.
//   - Nats-Expected-Last-Msg-Id is checked only when a clustered stream
//     applies the message, and a mismatch there stops the stream taking
//     any write (the replicas' apply fails; seen in a 3-server cluster).
//   - Atomic batch publish (AllowAtomicPublish, 2.12+) rejects a whole
//     batch holding a message id the stream already has, so the resend of
//     a batch whose commit was stored but not acknowledged fails forever,
//     and nats.go has no API for it.
//
// L must be exact, not just recent: were it below the stream's last
// sequence, a row after one that was rejected could find its expectation
// met. The relay learns it from a round sent in waves that ended with
// every row acknowledged (the highest sequence stored, duplicates aside),
// keeps it while every row of every round is acknowledged as the sequence
// it predicted, and forgets it after anything else (a failure, a
// rejection, a duplicate, a PostgreSQL lock released or lost); without it
// the round is sent in waves. One gap is left: a PostgreSQL relay frozen
// past its lease in the middle of sending a batch (another replica has
// published since) could send the rest of it with an L that is too low;
// it stops sending once half its lease has passed since it read the batch,
// but a message already in the client's write buffer still goes out when
// it thaws. Most such rows are refused (the stream has moved past their
// expectation) or dropped as duplicates, but not all: if the other relay
// has stored rows this batch never read (a row with a lower seq that
// committed after this relay's read) so that the stream's last sequence is
// exactly a stale row's expectation when it arrives, while an earlier row
// of its thread was refused and is not stored yet, the stale row is stored
// ahead of it (TestFrozenPostgresRelayCanStoreALaterRowFirst builds that
// interleave). Waves have no such gap: they send a row only after every
// earlier row of its subject is stored, so a stale row can only be stored
// behind them, or dropped as a duplicate. JetStream offers no fence that
// would refuse a former holder's messages (see above), so closing it means
// waves on PostgreSQL, at their cost in round trips for busy threads.
//
// On SQLite a chained round also takes the rows committed while it waits
// for its acknowledgements and sends them chained behind the rows in
// flight (publishChained), up to Batch rows in all: they need not wait for
// the round to end and the next to read them. A failure rejects them with
// the rest of the round, and the next round sends them again. (PostgreSQL
// rounds do not: a round there is bounded by the outbox lock's lease.)
func (r *Relay) publish(ctx context.Context, rows []row) (sent []row, acked []int64, prefix int, err error) {
	if len(rows) == 0 {
		return nil, nil, 0, nil
	}
	streams := make([]string, len(rows))
	chained := !r.waves
	for i, x := range rows {
		streams[i] = r.streamOf(x.subject)
		if _, ok := r.last[streams[i]]; !ok {
			chained = false
		}
	}
	ok := make([]bool, len(rows))
	r.observeWait(rows, time.Now())
	if chained {
		rows, ok, acked, err = r.publishChained(ctx, rows, streams, ok)
	} else {
		t0 := time.Now()
		acked, err = r.publishWaves(ctx, rows, streams, ok)
		d := time.Since(t0).Seconds()
		for range acked {
			r.stats.ack.Observe(d)
		}
	}
	if len(acked) > 0 {
		r.stats.published.Add(int64(len(acked)))
		r.log.Debug("outbox relayed", zap.Int(logkeys.Count, len(acked)))
	}
	return rows, acked, prefixOf(ok), err
}

// streamOf is natsx.StreamOf(subject), remembered by the subject's first
// two tokens (all it depends on: "<prefix>.<service>"), which StreamOf
// would build anew, in three allocations, for every row.
func (r *Relay) streamOf(subject string) string {
	i := strings.IndexByte(subject, '.')
	j := -1
	if i >= 0 {
		j = strings.IndexByte(subject[i+1:], '.')
	}
	if j < 0 {
		return natsx.StreamOf(subject)
	}
	key := subject[:i+1+j]
	s, ok := r.streams[key]
	if !ok {
		s = natsx.StreamOf(subject)
		if r.streams == nil {
			r.streams = map[string]string{}
		}
		if len(r.streams) < 64 { // a few services' worth; others are not remembered
			r.streams[key] = s
		}
	}
	return s
}

// observeWait records the rows' time from their write, and from their
// commit's hand-off, to being sent.
func (r *Relay) observeWait(rows []row, sent time.Time) {
	for _, x := range rows {
		r.stats.wait.Observe(sent.Sub(time.UnixMicro(x.created)).Seconds())
		if !x.handed.IsZero() {
			r.stats.handoff.Observe(sent.Sub(x.handed).Seconds())
		}
	}
}

// wrongLastSequence is JetStream's error code for a publish whose
// Nats-Expected-Last-Sequence was not the stream's last sequence
// (JSStreamWrongLastSequenceErrF).
const wrongLastSequence jetstream.ErrorCode = 10071

// publishChained sends every row at once, each expecting the stream's last
// sequence to be that of the row before it (see publish). It sets ok[i] for
// the rows acknowledged.
//
// The rows of one stream that go out together (at least minBatch of them)
// go as one JetStream fast batch (nats-server 2.14+, streams with
// allow_batched; natsx.Streams sets it): one PubAck for the batch instead of
// one per row. Each row still carries its Nats-Msg-Id and its
// Nats-Expected-Last-Sequence, checked per row inside a fast batch as for a
// row on its own; the batch's gap mode is "fail": the server stores its rows
// in order and stops at the first it refuses (or lacks: a publish lost to a
// leader change), answering with the count of rows stored from the first
// (a duplicate counts as stored, not stored again). So the batch's rows up
// to its count are acknowledged and the rest are not, exactly as the chain
// leaves them for rows published one by one (BENCHMARKS.md, batch21). A
// stream that refuses batches (an older server, or allow_batched off) gets
// its rows one by one from then on, for a while (noBatchFor).
//
// On SQLite it also takes rows committed while it waits (a wake-up of the
// relay), up to Batch in all, and sends them at once, chained behind the
// rows in flight: they need not wait for this round's acknowledgements and
// the next round's read (the wait that was most of an event's time in the
// relay under load; BENCHMARKS.md, stream9). They are part of the round:
// rows and ok come back with them appended. It stops taking more after
// anything unforeseen (a failure, a rejection, a duplicate), as the rows
// behind it would be refused anyway.
func (r *Relay) publishChained(ctx context.Context, rows []row, streams []string, ok []bool) (_ []row, _ []bool, acked []int64, err error) {
	var spans []trace.Span
	defer func() { endSpans(spans) }()
	next := make(map[string]uint64, 1) // expectation of the stream's next row
	for s, l := range r.last {
		next[s] = l
	}
	clear(r.last) // known again only if every row is acknowledged as predicted
	round, err := r.pub.begin(len(rows))
	if err != nil {
		return rows, ok, nil, fmt.Errorf("publish: %w", err)
	}
	// Per row (by index): its expectation, when it was sent, whether it was.
	expect := make([]uint64, 0, len(rows))
	sentAt := make([]time.Time, 0, len(rows))
	isSent := make([]bool, 0, len(rows))
	// units are what is awaited, in the order sent: a row on its own, or a
	// fast batch's rows in their order (its PubAck answers for them all).
	var units []unit
	sent := 0 // rows[:sent] were all sent
	// send publishes rows[from:], chained; false after a failed send (the
	// rows after the first one not sent are then not the round's).
	send := func(from int) bool {
		now := time.Now()
		for len(expect) < len(rows) {
			expect, sentAt, isSent = append(expect, 0), append(sentAt, time.Time{}), append(isSent, false)
		}
		good := true
	sending:
		for _, u := range r.plan(rows, streams, from, now) {
			if !r.claimed.IsZero() && time.Since(r.claimed) > r.lease()/2 {
				// Frozen in between: the lock may be another replica's by
				// now, and with it the stream; the rest waits for a round.
				good = false
				break
			}
			for k, i := range u.idx {
				x := rows[i]
				var tp string
				if x.traceparent.Valid && telemetry.Enabled() {
					if spans != nil && len(spans) < len(rows) {
						spans = append(spans, make([]trace.Span, len(rows)-len(spans))...)
					}
					spans, tp = r.startPublish(ctx, spans, len(rows), i, x)
				}
				var pos batchPos
				if u.batch {
					pos = batchPos{first: u.idx[0], k: k + 1, n: len(u.idx)}
				}
				e := next[streams[i]]
				if perr := r.pub.send(round, i, x.subject, x.payload, x.id, true, e, tp, pos); perr != nil {
					// A batch cut short is never committed nor answered:
					// not awaited (its rows sent are not acknowledged, and
					// go again, dropped as duplicates if stored).
					err = fmt.Errorf("publish %s: %w", x.subject, perr)
					good = false
					break sending
				}
				next[streams[i]] = e + 1
				expect[i], sentAt[i], isSent[i] = e, now, true
			}
			units = append(units, u)
		}
		for sent < len(rows) && isSent[sent] {
			sent++
		}
		// What was sent (rows after the first not sent are not the round's).
		rows, ok, streams = rows[:sent], ok[:sent], streams[:sent]
		expect, sentAt, isSent = expect[:sent], sentAt[:sent], isSent[:sent]
		return good
	}
	more := send(0) && r.db.Dialect() != sqldb.Postgres
	if len(units) == 0 {
		return rows, ok, nil, err
	}
	r.stats.waits.Add(1)
	acked = make([]int64, 0, len(rows))
	predicted := true // every row acknowledged as stored where expected
	rejected := false // a row was refused as out of turn
	failed := err != nil
	timeout := time.NewTimer(r.ackWait())
	defer timeout.Stop()
	// taking: the wait takes rows committed meanwhile (a wake-up of the
	// relay) and sends them at once, chained behind those in flight.
	taking := func() chan struct{} {
		if more && predicted && !failed && len(rows) < r.Batch {
			return r.kick
		}
		return nil
	}
	// refused files a row's refusal: out of turn (behind a row refused or
	// lacking, or a duplicate), else a failure.
	refused := func(i int, e error) {
		predicted = false
		var apiErr *jetstream.APIError
		if errors.As(e, &apiErr) {
			switch apiErr.ErrorCode {
			case wrongLastSequence, batchUnknown:
				// Not stored. Behind a failure, part of it; else an
				// earlier row was a duplicate (it takes no sequence).
				rejected = true
				return
			case batchDisabled:
				// Not stored: the stream takes no fast batch (allow_batched
				// off, or a server before 2.14 answering so). Rows one by
				// one for a while; the next round sends them again.
				r.noBatch(streams[i])
				rejected = true
				return
			}
		}
		failed = true
		err = errors.Join(err, fmt.Errorf("publish %s: %w", rows[i].subject, e))
	}
	// single reads a row's own reply.
	single := func(i int, reply *nats.Msg) {
		a, e := parseAck(reply)
		if e != nil {
			refused(i, e)
			return
		}
		ok[i] = true
		acked = append(acked, rows[i].seq)
		r.stats.ack.Observe(time.Since(sentAt[i]).Seconds())
		if a.duplicate || a.seq != expect[i]+1 || string(a.stream) != streams[i] {
			predicted = false
		}
	}
	for u := 0; u < len(units); u++ {
		wake := taking() // a wake-up: rows may have been committed
		// extended: the wait for unit u has given the rows taken
		// meanwhile AckWait once; later ones do not extend it again
		// (the round's wait grows by at most one AckWait per
		// acknowledgement, as when it took one commit per acknowledgement),
		// so a publish never answered still fails the round however often
		// commits come: each one taken would otherwise put it off again.
		extended := false
	wait:
		if !r.answered(units[u]) {
			select {
			case <-wake:
				// Every commit during the wait is taken as it comes, not
				// only the first one per acknowledgement: behind a slow
				// acknowledgement (tens of ms under load) the later ones
				// waited for it (BENCHMARKS.md, tail18). A wake-up this
				// wait makes itself (r.Kick below) is left to the next
				// round: those rows cannot go in this one.
				wake = nil
				extra, lerr := r.next(ctx, rows[len(rows)-1].seq, r.Batch-len(rows), false)
				if lerr != nil {
					more = false
					r.Kick() // the next round reads again
					goto wait
				}
				if len(extra) == 0 {
					wake = taking()
					goto wait
				}
				if len(extra) == r.Batch-len(rows) {
					r.Kick() // there may be more: the next round looks at once
				}
				from, unknown := len(rows), false
				for _, x := range extra {
					rows, ok, streams = append(rows, x), append(ok, false), append(streams, r.streamOf(x.subject))
					if _, known := next[streams[len(streams)-1]]; !known {
						// A stream this round has not learnt: the rest
						// waits for a round of its own (in waves).
						rows, ok, streams = rows[:len(rows)-1], ok[:len(ok)-1], streams[:len(streams)-1]
						r.readTable = true // the rest may have come from the queue
						r.Kick()
						unknown = true
						break
					}
				}
				r.observeWait(rows[from:], time.Now())
				if !send(from) {
					more, failed = false, true
				}
				if len(rows) < from+len(extra) {
					r.readTable = true // rows taken and not sent
				}
				if !extended {
					timeout.Reset(r.ackWait())
					extended = true
				}
				if !unknown {
					wake = taking()
				}
				goto wait
			case <-r.pub.notify:
				goto wait
			case <-timeout.C:
				return rows, ok, acked, errors.Join(err, fmt.Errorf("publish: no acknowledgement in %s", r.ackWait()))
			case <-ctx.Done():
				return rows, ok, acked, ctx.Err()
			}
		}
		idx := units[u].idx
		for len(idx) > 0 && idx[len(idx)-1] >= len(rows) {
			idx = idx[:len(idx)-1] // sent after a failed send: not the round's
		}
		if len(idx) == 0 {
			continue
		}
		r.stats.acks.Add(1)
		if !units[u].batch {
			single(idx[0], r.pub.ack(idx[0]))
			continue
		}
		ba := r.pub.batchAck(units[u].idx[0])
		if ba == nil {
			// No PubAck for the batch: each row was answered on its own
			// (stored as a row of its own by a server that does not batch,
			// or refused), or its last row was refused before the batch.
			r.stats.acks.Add(int64(len(idx) - 1))
			for _, i := range idx {
				if reply := r.pub.ack(i); reply != nil {
					single(i, reply)
				} else {
					// Unanswered behind a refusal (a server that lost the
					// batch): maybe stored; the next round tells.
					predicted, failed = false, true
					err = errors.Join(err, fmt.Errorf("publish %s: no acknowledgement", rows[i].subject))
				}
			}
			continue
		}
		a, e := parseAck(ba)
		if e != nil { // not the server's: it names the batch only on success
			refused(idx[0], e)
			continue
		}
		c := int(min(a.count, uint64(len(units[u].idx))))
		for _, i := range idx[:min(c, len(idx))] {
			ok[i] = true
			acked = append(acked, rows[i].seq)
			r.stats.ack.Observe(time.Since(sentAt[i]).Seconds())
		}
		lastRow := units[u].idx[len(units[u].idx)-1]
		if a.duplicate || c < len(units[u].idx) || string(a.stream) != streams[idx[0]] || a.seq != expect[lastRow]+1 {
			predicted = false
		}
		if c < len(idx) {
			// The batch ended at row c: what the server said of it.
			if reply := r.pub.ack(idx[c]); reply != nil {
				if _, e := parseAck(reply); e != nil {
					refused(idx[c], e)
					continue
				}
			}
			failed = true // lacking (lost to a leader change): the next round tells
			err = errors.Join(err, fmt.Errorf("publish %s: fast batch ended after %d of %d rows", rows[idx[c]].subject, c, len(units[u].idx)))
		}
	}
	if predicted && !failed {
		for s, e := range next {
			r.last[s] = e
		}
	}
	if rejected && !failed {
		r.again = true // the rejected rows go out in the next round, at once
	}
	return rows, ok, acked, err
}

// unit is what a chained round awaits as one: a row on its own (idx one
// row's index), or a fast batch's rows in their order (batch).
type unit struct {
	idx   []int
	batch bool
}

// minBatch is the fewest rows of a stream sent as a fast batch: a batch of
// more than one row is answered twice (a flow message for its first row,
// then its PubAck), so two rows gain nothing over two publishes.
const minBatch = 3

// noBatchFor is how long a relay sends a stream's rows one by one after the
// stream refused a fast batch (allow_batched off: a process of an older
// version reconciled it, or the server predates 2.14).
const noBatchFor = time.Minute

// JetStream's error codes for a fast batch refused: the stream takes none
// (JSBatchPublishDisabledErr), and a row of a batch whose first row was
// refused (JSBatchPublishUnknownBatchIDErr: the server dropped the batch).
const (
	batchDisabled jetstream.ErrorCode = 10205
	batchUnknown  jetstream.ErrorCode = 10208
)

// noBatch has the stream's rows sent one by one for noBatchFor.
func (r *Relay) noBatch(stream string) {
	if r.unbatched == nil {
		r.unbatched = map[string]time.Time{}
	}
	r.unbatched[stream] = time.Now().Add(noBatchFor)
}

// plan splits rows[from:] into what send publishes, stream by stream in the
// order they first appear: a stream's rows as one fast batch when there are
// at least minBatch of them and the stream takes batches, else each on its
// own.
func (r *Relay) plan(rows []row, streams []string, from int, now time.Time) []unit {
	var order []string
	by := map[string][]int{}
	for i := from; i < len(rows); i++ {
		s := streams[i]
		if _, seen := by[s]; !seen {
			order = append(order, s)
		}
		by[s] = append(by[s], i)
	}
	units := make([]unit, 0, len(order))
	for _, s := range order {
		idx := by[s]
		until, off := r.unbatched[s]
		if off && now.After(until) {
			delete(r.unbatched, s)
			off = false
		}
		if len(idx) >= minBatch && !off && !r.noBatches {
			units = append(units, unit{idx: idx, batch: true})
			continue
		}
		for _, i := range idx {
			units = append(units, unit{idx: []int{i}})
		}
	}
	return units
}

// answered says whether unit u has what it waits for: a row's reply; a
// batch's PubAck, or else a refusal of its last row before the batch (the
// server will send no PubAck), or a reply of its own for every row (a server
// that does not batch stores each row on its own).
func (r *Relay) answered(u unit) bool {
	if !u.batch {
		return r.pub.ack(u.idx[0]) != nil
	}
	if r.pub.batchAck(u.idx[0]) != nil {
		return true
	}
	if last := r.pub.ack(u.idx[len(u.idx)-1]); last != nil && !bytes.HasPrefix(last.Data, []byte(`{"type"`)) {
		if _, e := parseAck(last); e != nil {
			return true
		}
	}
	for _, i := range u.idx {
		if r.pub.ack(i) == nil {
			return false
		}
	}
	return true
}

// publishWaves sends the first row of every subject, pipelined, then once
// all are acknowledged the second row of every subject, and so on; it sends
// no further wave after one that failed (see publish). A round whose every
// row is acknowledged teaches the relay each stream's last sequence. It sets
// ok[i] for the rows acknowledged.
func (r *Relay) publishWaves(ctx context.Context, rows []row, streams []string, ok []bool) (acked []int64, err error) {
	var spans []trace.Span // of traced rows, by index; nil when none is
	defer func() { endSpans(spans) }()
	wait := r.ackWait()
	clear(r.last)
	// wave[i] is row i's place among the batch's rows of its subject.
	wave := make([]int, len(rows))
	perSubject := make(map[string]int, len(rows))
	waves := 0
	for i, x := range rows {
		wave[i] = perSubject[x.subject]
		perSubject[x.subject]++
		waves = max(waves, wave[i]+1)
	}
	acked = make([]int64, 0, len(rows))
	last := map[string]uint64{} // highest sequence stored per stream
	learn := true               // every acknowledgement names the stream expected
	idx := make([]int, 0, len(rows))
	// A round that has taken half the PostgreSQL lease starts no further
	// wave (the rest waits for the next round), so that the lock is not
	// lost while waves wait on NATS. Order would hold even then, as a row
	// is only sent once the earlier rows of its subject are stored, but
	// the other replica would publish the same rows again.
	deadline := time.Now().Add(r.lease() / 2)
	w := 0
	for ; w < waves && err == nil && (w == 0 || time.Now().Before(deadline)); w++ {
		idx = idx[:0]
		round, berr := r.pub.begin(len(rows))
		if berr != nil {
			err = fmt.Errorf("publish: %w", berr)
			break
		}
		for i, x := range rows {
			if wave[i] != w {
				continue
			}
			var tp string
			if x.traceparent.Valid && telemetry.Enabled() {
				spans, tp = r.startPublish(ctx, spans, len(rows), i, x)
			}
			if perr := r.pub.send(round, len(idx), x.subject, x.payload, x.id, false, 0, tp, batchPos{}); perr != nil {
				err = fmt.Errorf("publish %s: %w", x.subject, perr)
				break
			}
			idx = append(idx, i)
		}
		// Wait for every publish of the wave, even after a failure: what
		// is acknowledged is stored, and need not be sent again.
		if len(idx) > 0 {
			r.stats.waits.Add(1)
		}
		timeout := time.NewTimer(wait)
	collect:
		for k, i := range idx {
			reply := r.pub.ack(k)
			for reply == nil {
				select {
				case <-r.pub.notify:
					reply = r.pub.ack(k)
				case <-timeout.C:
					err = errors.Join(err, fmt.Errorf("publish: no acknowledgement in %s", wait))
					break collect
				case <-ctx.Done():
					timeout.Stop()
					return acked, ctx.Err()
				}
			}
			r.stats.acks.Add(1)
			a, e := parseAck(reply)
			if e != nil {
				err = errors.Join(err, fmt.Errorf("publish %s: %w", rows[i].subject, e))
				continue
			}
			ok[i] = true
			acked = append(acked, rows[i].seq)
			switch {
			case string(a.stream) != streams[i]:
				learn = false
			case !a.duplicate:
				last[streams[i]] = max(last[streams[i]], a.seq)
			}
		}
		timeout.Stop()
	}
	if err == nil && w == waves && learn {
		// Every row is stored; nothing of this relay's is in flight, and
		// no other writer publishes to the stream: its last sequence is
		// the highest that this round stored, if it stored any.
		for s, l := range last {
			r.last[s] = l
		}
	}
	return acked, err
}

// ackWait is AckWait or its default.
func (r *Relay) ackWait() time.Duration {
	if r.AckWait <= 0 {
		return DefaultAckWait
	}
	return r.AckWait
}

// prefixOf is how many leading entries of ok are true.
func prefixOf(ok []bool) int {
	for i, v := range ok {
		if !v {
			return i
		}
	}
	return len(ok)
}

// startPublish starts the producer span of publishing row x, child of the
// transaction that wrote it, and returns the span's context as the
// traceparent header for the consumers.
func (r *Relay) startPublish(ctx context.Context, spans []trace.Span, n, i int, x row) (_ []trace.Span, traceparent string) {
	if spans == nil {
		spans = make([]trace.Span, n)
	}
	pctx := telemetry.FromTraceparent(ctx, x.traceparent.String)
	sctx, span := telemetry.Tracer().Start(pctx, "publish "+natsx.Base(x.subject), trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", x.subject),
			attribute.String("messaging.message.id", x.id)))
	spans[i] = span
	return spans, telemetry.Traceparent(sctx)
}

// endSpans ends the publish spans (at the acknowledgement, or when the
// round gives up).
func endSpans(spans []trace.Span) {
	for _, s := range spans {
		if s != nil {
			s.End()
		}
	}
}
