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
//	          subject TEXT NOT NULL, payload BLOB NOT NULL, created_at BIGINT NOT NULL)
//	Postgres: the same with seq BIGSERIAL and payload BYTEA.
package outbox

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/clinicchat/clinicchat/services/platform/eventtype"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
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
	_, err = tx.Exec(ctx, `INSERT INTO outbox (id, subject, payload, created_at) VALUES (?, ?, ?, ?)`,
		id, subject, payload, time.Now().UnixMicro())
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
	// PostgreSQL outbox lock (default 30s; keep it above the 10s publish
	// timeout, or a slow relay loses the lock and its rows are published
	// twice, the second time dropped as duplicates).
	Lease time.Duration

	// afterClaim runs after a PostgreSQL round has read its batch (tests).
	afterClaim func(ctx context.Context)

	// SQLite: rows up to published are on JetStream; they are deleted in
	// one statement once a second or every 1024 rows, not after every round
	// (a delete is a durable commit: an fsync). A crash before the delete
	// republishes them, and JetStream drops them as duplicates.
	published, undeleted int64
	lastDelete           time.Time
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
			backoff = min(backoff*2, 5*time.Second)
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
	seq     int64
	id      string
	subject string
	payload []byte
}

// Flush publishes one batch and returns how many rows it published.
func (r *Relay) Flush(ctx context.Context) (int, error) {
	if r.db.Dialect() == sqldb.Postgres {
		return r.flushPostgres(ctx)
	}
	rows, err := load(ctx, r.db, `SELECT seq, id, subject, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?`, r.published, r.Batch)
	if err != nil {
		return 0, err
	}
	done, perr := r.publish(ctx, rows)
	if len(done) > 0 {
		r.published = done[len(done)-1]
		r.undeleted += int64(len(done))
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
	lease := r.Lease
	if lease <= 0 {
		lease = 30 * time.Second
	}
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
	done, perr := r.publish(ctx, rows)
	if len(done) > 0 {
		if _, err := r.db.Raw().ExecContext(ctx, `DELETE FROM outbox WHERE seq = ANY($1)`, done); err != nil {
			// Published but not deleted: the next round publishes them
			// again and JetStream drops the duplicates.
			return 0, errors.Join(perr, fmt.Errorf("delete outbox rows: %w", err))
		}
	}
	return len(done), perr
}

// discard closes conn instead of returning it to the pool.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}

func loadConn(ctx context.Context, conn *sql.Conn, limit int) ([]row, error) {
	rs, err := conn.QueryContext(ctx, `SELECT seq, id, subject, payload FROM outbox ORDER BY seq LIMIT $1`, limit)
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
		if err := rs.Scan(&x.seq, &x.id, &x.subject, &x.payload); err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, rs.Err()
}

// publish sends rows in order, pipelined, and returns the seqs acknowledged
// (a prefix of rows: it stops at the first failure to keep order).
func (r *Relay) publish(ctx context.Context, rows []row) ([]int64, error) {
	futures := make([]jetstream.PubAckFuture, 0, len(rows))
	var err error
	for _, x := range rows {
		m := nats.NewMsg(x.subject)
		m.Data = x.payload
		var f jetstream.PubAckFuture
		f, err = r.js.PublishMsgAsync(m, jetstream.WithMsgID(x.id))
		if err != nil {
			break
		}
		futures = append(futures, f)
	}
	done := make([]int64, 0, len(futures))
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for i, f := range futures {
		select {
		case <-f.Ok():
			done = append(done, rows[i].seq)
		case e := <-f.Err():
			return done, errors.Join(err, fmt.Errorf("publish %s: %w", rows[i].subject, e))
		case <-timeout.C:
			return done, errors.Join(err, errors.New("publish: no acknowledgement in 10s"))
		case <-ctx.Done():
			return done, ctx.Err()
		}
	}
	if len(done) > 0 {
		r.log.Debug("outbox relayed", zap.Int(logkeys.Count, len(done)))
	}
	return done, err
}
