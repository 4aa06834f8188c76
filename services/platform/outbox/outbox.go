// Package outbox is the transactional outbox: a service writes its event into
// its own "outbox" table in the same transaction as the change, and a Relay
// publishes the rows to JetStream with Nats-Msg-Id = event id (so a retry is
// dropped by the stream's duplicate window) and deletes each row after its
// PubAck. The database is the system of record; JetStream only carries events.
//
// Each service's migrations create the table:
//
//	SQLite:   outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
//	          subject TEXT NOT NULL, payload BLOB NOT NULL, created_at BIGINT NOT NULL)
//	Postgres: the same with seq BIGSERIAL and payload BYTEA.
package outbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// Event is one event to write with a change: its id (EventMeta.id, also the
// Nats-Msg-Id), its subject and its payload.
type Event struct {
	ID      string
	Subject string
	Msg     proto.Message
}

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
	return nil
}

// Relay publishes outbox rows to JetStream.
type Relay struct {
	db    *sqldb.DB
	js    jetstream.JetStream
	log   *zap.Logger
	kick  chan struct{}
	Poll  time.Duration // how often to look without a kick (default 1s)
	Batch int           // rows per round (default 256)

	// SQLite: rows up to published are on JetStream; they are deleted in
	// one statement once a second or every 1024 rows, not after every round
	// (a delete is a durable commit: an fsync). A crash before the delete
	// republishes them, and JetStream drops them as duplicates.
	published, undeleted int64
	lastDelete           time.Time
}

// NewRelay returns a relay that wakes after every commit of db.
func NewRelay(db *sqldb.DB, js jetstream.JetStream, log *zap.Logger) *Relay {
	r := &Relay{db: db, js: js, log: log, kick: make(chan struct{}, 1), Poll: time.Second, Batch: 256}
	db.OnCommit(r.Kick)
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
		// Several replicas may relay at once: claim rows with SKIP LOCKED and
		// keep the claim until they are deleted.
		n := 0
		err := r.db.Write(ctx, func(tx *sqldb.Tx) error {
			rows, err := load(ctx, tx, `SELECT seq, id, subject, payload FROM outbox ORDER BY seq LIMIT ? FOR UPDATE SKIP LOCKED`, r.Batch)
			if err != nil {
				return err
			}
			done, perr := r.publish(ctx, rows)
			n = len(done)
			if err := deleteRows(ctx, tx, done); err != nil {
				return err
			}
			return perr
		})
		if err != nil && n > 0 {
			// The publish error rolled back the deletes; those rows will be
			// republished and dropped as duplicates by JetStream.
			n = 0
		}
		return n, err
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

func load(ctx context.Context, q sqldb.Querier, query string, args ...any) ([]row, error) {
	rs, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("load outbox: %w", err)
	}
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

func deleteRows(ctx context.Context, tx *sqldb.Tx, seqs []int64) error {
	for len(seqs) > 0 {
		n := min(len(seqs), 200)
		args := make([]any, n)
		for i := range n {
			args[i] = seqs[i]
		}
		q := `DELETE FROM outbox WHERE seq IN (?` + strings.Repeat(`, ?`, n-1) + `)`
		if _, err := tx.Exec(ctx, q, args...); err != nil {
			return fmt.Errorf("delete outbox rows: %w", err)
		}
		seqs = seqs[n:]
	}
	return nil
}
