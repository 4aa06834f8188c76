// Package outbox is the transactional outbox: a service writes its event into
// its own "outbox" table in the same transaction as the change, and a Relay
// publishes the rows to JetStream with Nats-Msg-Id = event id (so a retry is
// dropped by the stream's duplicate window) and deletes each row after its
// PubAck. The database is the system of record; JetStream only carries events.
//
// The relay wakes on the commit of a transaction that wrote outbox rows
// (sqldb signal Topic) and otherwise looks once per Poll; an idle relay
// commits nothing. See Relay for how several PostgreSQL replicas share one
// outbox.
//
// Each service's migrations create the table:
//
//	SQLite:   outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
//	          subject TEXT NOT NULL, payload BLOB NOT NULL, created_at BIGINT NOT NULL,
//	          traceparent TEXT)
//	Postgres: the same with seq BIGSERIAL and payload BYTEA.
//
// traceparent is the W3C trace context of the transaction that wrote the row
// (NULL when tracing is off): the relay publishes the event with it as the
// "traceparent" NATS header, so the event's consumers continue the trace of
// the request that caused it (package telemetry).
package outbox

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
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

// AddAll writes events into the outbox inside tx.
func AddAll(ctx context.Context, tx *sqldb.Tx, events []Event) error {
	for _, e := range events {
		if err := Add(ctx, tx, e.ID, e.Subject, e.Msg); err != nil {
			return err
		}
	}
	return nil
}

// Add writes one event into the outbox inside tx.
func Add(ctx context.Context, tx *sqldb.Tx, id, subject string, msg proto.Message) error {
	payload, err := proto.Marshal(msg)
	if err != nil {
		return fmt.Errorf("marshal event %s: %w", subject, err)
	}
	var traceparent any // NULL unless ctx is traced
	if tp := telemetry.Traceparent(ctx); tp != "" {
		traceparent = tp
	}
	_, err = tx.Exec(ctx, `INSERT INTO outbox (id, subject, payload, created_at, traceparent) VALUES (?, ?, ?, ?, ?)`,
		id, subject, payload, time.Now().UnixMicro(), traceparent)
	if err != nil {
		return fmt.Errorf("insert outbox: %w", err)
	}
	tx.Signal(Topic)
	return nil
}

// Topic is the sqldb signal of a transaction that wrote outbox rows: its
// commit wakes the relay (and no other commit does).
const Topic = "outbox"

// Relay publishes outbox rows to JetStream.
//
// PostgreSQL, where several replicas relay one database: a round that finds
// the outbox empty is one read and nothing else. Otherwise the relay takes
// the outbox's advisory lock (one per schema) on a connection of its own,
// reads a batch in seq order, publishes it outside any transaction, deletes
// the acknowledged rows and releases the lock: one relay publishes at a time,
// in seq order, so events keep their order per conversation whichever
// replica wrote them, and no transaction or row lock is open while NATS is
// slow. While it holds the lock its session has idle_session_timeout = Lease:
// a frozen relay loses its session, and with it the lock, after Lease and
// another replica publishes the rows again (JetStream drops the duplicates
// by Nats-Msg-Id within its duplicate window; a crashed relay's session
// ends at once).
type Relay struct {
	db    *sqldb.DB
	js    jetstream.JetStream
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

	// afterClaim runs after a PostgreSQL round has read its batch (tests).
	afterClaim func(ctx context.Context)

	// SQLite: rows up to published are on JetStream; they are deleted in
	// one statement once a second or every 1024 rows, not after every round
	// (a delete is a durable commit: an fsync). A crash before the delete
	// republishes them, and JetStream drops them as duplicates.
	published, undeleted int64
	lastDelete           time.Time
	// publishedMark is published, for the backlog metric (read at scrape).
	publishedMark atomic.Int64
}

// NewRelay returns a relay that wakes after every commit of db that wrote
// outbox rows.
func NewRelay(db *sqldb.DB, js jetstream.JetStream, log *zap.Logger) *Relay {
	r := &Relay{db: db, js: js, log: log, kick: make(chan struct{}, 1), Poll: time.Second, Batch: 256, Lease: 30 * time.Second}
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
	backoff := 100 * time.Millisecond
	for {
		n, err := r.Flush(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			r.log.Warn("outbox relay: publish failed; will retry", zap.Error(err), zap.Duration("backoff", backoff))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, maxBackoff)
			continue
		case n >= r.Batch:
			backoff = 100 * time.Millisecond
			continue // more waiting
		}
		backoff = 100 * time.Millisecond
		select {
		case <-ctx.Done():
			return nil
		case <-r.kick:
		case <-t.C:
		}
	}
}

type row struct {
	seq         int64
	id          string
	subject     string
	payload     []byte
	traceparent sql.NullString
}

// Flush publishes one batch and returns how many rows it published.
func (r *Relay) Flush(ctx context.Context) (int, error) {
	if r.db.Dialect() == sqldb.Postgres {
		return r.flushPostgres(ctx)
	}
	rows, err := load(ctx, r.db, `SELECT seq, id, subject, payload, traceparent FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?`, r.published, r.Batch)
	if err != nil {
		return 0, err
	}
	// Rows acknowledged after one that failed are sent again next round
	// (behind it) and dropped as duplicates: published marks the prefix.
	done, prefix, perr := r.publish(ctx, rows)
	if prefix > 0 {
		r.published = rows[prefix-1].seq
		r.undeleted += int64(prefix)
		r.publishedMark.Store(r.published)
	}
	if r.undeleted > 0 && (r.undeleted >= 1024 || time.Since(r.lastDelete) >= time.Second) {
		if _, err := r.db.Exec(ctx, `DELETE FROM outbox WHERE seq <= ?`, r.published); err != nil {
			return len(done), err
		}
		r.undeleted, r.lastDelete = 0, time.Now()
	}
	return len(done), perr
}

// lockKey is the first half of the outbox's advisory lock; the second is a
// hash of the schema, so services sharing a database do not share the lock.
const lockKey = 7342002

func (r *Relay) flushPostgres(ctx context.Context) (n int, err error) {
	var one int
	switch err := r.db.QueryRow(ctx, `SELECT 1 FROM outbox LIMIT 1`).Scan(&one); {
	case errors.Is(err, sql.ErrNoRows):
		return 0, nil // idle: one read, no commit of ours
	case err != nil:
		return 0, fmt.Errorf("outbox: %w", err)
	}
	conn, err := r.db.Raw().Conn(ctx)
	if err != nil {
		return 0, fmt.Errorf("outbox: %w", err)
	}
	lease := r.lease()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1, hashtext(current_schema())), set_config('idle_session_timeout', $2, false)`,
		lockKey, strconv.FormatInt(lease.Milliseconds(), 10)); err != nil {
		discard(conn)
		return 0, fmt.Errorf("outbox lock: %w", err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, uerr := conn.ExecContext(uctx, `SELECT pg_advisory_unlock($1, hashtext(current_schema())), set_config('idle_session_timeout', '0', false)`, lockKey); uerr != nil {
			discard(conn) // the session (and with it the lock) is gone or going
			if err == nil && ctx.Err() == nil {
				err = fmt.Errorf("outbox unlock: %w", uerr)
			}
			return
		}
		_ = conn.Close()
	}()
	rows, err := loadConn(ctx, conn, r.Batch)
	if err != nil || len(rows) == 0 {
		return 0, err
	}
	if r.afterClaim != nil {
		r.afterClaim(ctx)
	}
	// Delete every acknowledged row, also those after a row that failed:
	// a row is only sent after the earlier rows of its subject were
	// acknowledged, so what stays is the failed rows and those behind them.
	done, _, perr := r.publish(ctx, rows)
	if len(done) > 0 {
		if _, err := r.db.Raw().ExecContext(ctx, `DELETE FROM outbox WHERE seq = ANY($1)`, done); err != nil {
			// Published but not deleted: the next round publishes them
			// again and JetStream drops the duplicates.
			return 0, errors.Join(perr, fmt.Errorf("delete outbox rows: %w", err))
		}
	}
	return len(done), perr
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

func loadConn(ctx context.Context, conn *sql.Conn, limit int) ([]row, error) {
	rs, err := conn.QueryContext(ctx, `SELECT seq, id, subject, payload, traceparent FROM outbox ORDER BY seq LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("load outbox: %w", err)
	}
	return scan(rs)
}

func load(ctx context.Context, q sqldb.Querier, query string, args ...any) ([]row, error) {
	rs, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("load outbox: %w", err)
	}
	return scan(rs)
}

func scan(rs *sql.Rows) ([]row, error) {
	defer rs.Close()
	var out []row
	for rs.Next() {
		var x row
		if err := rs.Scan(&x.seq, &x.id, &x.subject, &x.payload, &x.traceparent); err != nil {
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
// which the next round sends again behind it. So a row is only sent once
// every earlier row of its subject has been acknowledged: publish sends the
// rows in waves, the first row of every subject, pipelined, then, once all
// are acknowledged, the second row of every subject, and so on, and it
// sends no further wave after one that failed. Rows of different subjects
// are pipelined together, as they need no order between them.
func (r *Relay) publish(ctx context.Context, rows []row) (acked []int64, prefix int, err error) {
	var spans []trace.Span // of traced rows, by index; nil when none is
	defer func() { endSpans(spans) }()
	wait := r.AckWait
	if wait <= 0 {
		wait = DefaultAckWait
	}
	// wave[i] is row i's place among the batch's rows of its subject.
	wave := make([]int, len(rows))
	perSubject := make(map[string]int, len(rows))
	waves := 0
	for i, x := range rows {
		wave[i] = perSubject[x.subject]
		perSubject[x.subject]++
		waves = max(waves, wave[i]+1)
	}
	ok := make([]bool, len(rows))
	acked = make([]int64, 0, len(rows))
	idx := make([]int, 0, len(rows))
	futures := make([]jetstream.PubAckFuture, 0, len(rows))
	// A round that has taken half the PostgreSQL lease starts no further
	// wave (the rest waits for the next round), so that the lock is not
	// lost while waves wait on NATS. Order would hold even then, as a row
	// is only sent once the earlier rows of its subject are stored, but
	// the other replica would publish the same rows again.
	deadline := time.Now().Add(r.lease() / 2)
	for w := 0; w < waves && err == nil && (w == 0 || time.Now().Before(deadline)); w++ {
		idx, futures = idx[:0], futures[:0]
		for i, x := range rows {
			if wave[i] != w {
				continue
			}
			m := nats.NewMsg(x.subject)
			m.Data = x.payload
			if x.traceparent.Valid && telemetry.Enabled() {
				spans = r.startPublish(ctx, spans, len(rows), i, x, m)
			}
			f, perr := r.js.PublishMsgAsync(m, jetstream.WithMsgID(x.id))
			if perr != nil {
				err = fmt.Errorf("publish %s: %w", x.subject, perr)
				break
			}
			idx, futures = append(idx, i), append(futures, f)
		}
		// Wait for every publish of the wave, even after a failure: what
		// is acknowledged is stored, and need not be sent again.
		timeout := time.NewTimer(wait)
	collect:
		for k, f := range futures {
			i := idx[k]
			select {
			case <-f.Ok():
				ok[i] = true
				acked = append(acked, rows[i].seq)
			case e := <-f.Err():
				err = errors.Join(err, fmt.Errorf("publish %s: %w", rows[i].subject, e))
			case <-timeout.C:
				err = errors.Join(err, fmt.Errorf("publish: no acknowledgement in %s", wait))
				break collect
			case <-ctx.Done():
				timeout.Stop()
				return acked, prefixOf(ok), ctx.Err()
			}
		}
		timeout.Stop()
	}
	if len(acked) > 0 {
		r.log.Debug("outbox relayed", zap.Int(logkeys.Count, len(acked)))
	}
	return acked, prefixOf(ok), err
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
// transaction that wrote it, and puts the span's context in m's traceparent
// header for the consumers.
func (r *Relay) startPublish(ctx context.Context, spans []trace.Span, n, i int, x row, m *nats.Msg) []trace.Span {
	if spans == nil {
		spans = make([]trace.Span, n)
	}
	pctx := telemetry.FromTraceparent(ctx, x.traceparent.String)
	sctx, span := telemetry.Tracer().Start(pctx, "publish "+natsx.Base(x.subject), trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", x.subject),
			attribute.String("messaging.message.id", x.id)))
	spans[i] = span
	if tp := telemetry.Traceparent(sctx); tp != "" {
		m.Header.Set(telemetry.HeaderTraceparent, tp)
	}
	return spans
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
