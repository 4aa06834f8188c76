package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"modernc.org/sqlite"
)

// sqliteWriter is a SQLite database's one write connection, held by the
// writer goroutine for the database's life, with its statements prepared
// on it. The writer runs BEGIN, SAVEPOINT… and COMMIT itself instead of
// through a sql.Tx: a sql.Tx costs a pool round trip per batch, a
// Tx.StmtContext wrapper per statement (two allocations and a dependency
// entry under the pool's lock) and, in the driver, a BEGIN and a COMMIT
// parsed anew each time.
type sqliteWriter struct {
	conn  *sql.Conn
	stmts map[string]*sql.Stmt // the callers' statements, up to maxStmts

	begin, commit, rollback, savepoint, rollbackTo, release *sql.Stmt
}

func newSQLiteWriter(ctx context.Context, pool *sql.DB) (*sqliteWriter, error) {
	c, err := pool.Conn(ctx)
	if err != nil {
		return nil, err
	}
	w := &sqliteWriter{conn: c, stmts: map[string]*sql.Stmt{}}
	for _, p := range []struct {
		st **sql.Stmt
		q  string
	}{
		{&w.begin, "BEGIN IMMEDIATE"}, {&w.commit, "COMMIT"}, {&w.rollback, "ROLLBACK"},
		{&w.savepoint, "SAVEPOINT w"}, {&w.rollbackTo, "ROLLBACK TO w"}, {&w.release, "RELEASE w"},
	} {
		if *p.st, err = c.PrepareContext(ctx, p.q); err != nil {
			w.close()
			return nil, fmt.Errorf("prepare %s: %w", p.q, err)
		}
	}
	return w, nil
}

func (w *sqliteWriter) close() error {
	for _, st := range []*sql.Stmt{w.begin, w.commit, w.rollback, w.savepoint, w.rollbackTo, w.release} {
		if st != nil {
			_ = st.Close()
		}
	}
	for _, st := range w.stmts {
		_ = st.Close()
	}
	return w.conn.Close()
}

// stmt returns q prepared on the writer connection, or nil for a query not
// worth keeping (or once the cache is full): the caller then runs it
// unprepared, and sees its error if it does not prepare.
func (w *sqliteWriter) stmt(ctx context.Context, q string) *sql.Stmt {
	if st, ok := w.stmts[q]; ok {
		return st
	}
	if len(w.stmts) >= maxStmts || !cacheable(q) {
		return nil
	}
	st, err := w.conn.PrepareContext(ctx, q)
	if err != nil {
		return nil
	}
	w.stmts[q] = st
	return st
}

// abort ends the open transaction, if any (SQLite has already rolled back
// after some errors: ROLLBACK then fails, harmlessly).
func (w *sqliteWriter) abort() {
	_, _ = w.rollback.ExecContext(context.Background())
}

// walFrames adds the WAL frames the connection wrote since the last call
// (SQLITE_DBSTATUS_CACHE_WRITE: a WAL commit counts the frames it appends;
// read and reset, the C counter being 32 bits) to total.
func (w *sqliteWriter) walFrames(total interface{ Add(uint64) uint64 }) {
	_ = w.conn.Raw(func(dc any) error {
		st, ok := dc.(sqlite.DBStatus)
		if !ok {
			return nil
		}
		n, _, err := st.Status(sqlite.DBStatusCacheWrite, true)
		if err == nil && n > 0 {
			total.Add(uint64(n))
		}
		return err
	})
}

type job struct {
	ctx  context.Context
	fn   func(tx *Tx) error
	done chan error
	// background: a write no caller is waiting on (Background, or
	// WriteDeferred), which a batch takes after the waited-on ones and only
	// within backgroundBudget. due (WriteDeferred): when it runs even if no
	// other write came; zero: at once.
	background bool
	due        time.Time

	queued, started time.Time // when it was queued, when its statements started
}

const maxBatch = 128

// backgroundBudget is how long a batch may spend in background writes'
// statements (Background, WriteDeferred): a batch takes the next
// background write only while it has spent less than that on them, and
// the rest wait for the next batch. It bounds what a write a caller waits
// on (a send) can be held by writes nobody waits on (delivered and read
// receipts, the outbox relay's deletes): a commit's fsync is ~1–3 ms here,
// so a batch's background statements stay below one fsync. Every batch
// takes at least one, so they never starve.
const backgroundBudget = time.Millisecond

func (d *DB) writer() {
	defer d.wg.Done()
	batch := make([]*job, 0, maxBatch)
	results := make([]error, 0, maxBatch)
	// held: background writes not yet in a batch, in arrival order. A
	// deferred one (WriteDeferred) waits there for another write to start a
	// batch, or for its due time; one held back by backgroundBudget, or a
	// Background one, starts the next batch at once.
	var held []*job
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		var first *job
		if wake, due := heldDue(held); !due {
			if !wake.IsZero() {
				timer.Reset(time.Until(wake))
			}
			select {
			case <-d.stop:
				d.refuse(held)
				return
			case j := <-d.jobs:
				first = j
			case j := <-d.background:
				held = append(held, j)
			case j := <-d.deferred:
				// At most maxBatch/2 deferred writes wait for another.
				if held = append(held, j); len(held) < maxBatch/2 {
					timer.Stop()
					continue
				}
			case <-timer.C:
			}
			timer.Stop()
		}
		batch = batch[:0]
		if first != nil {
			batch = append(batch, first)
		}
		batch = d.fillWaited(batch)
		held = d.takeBackground(held)
		batch, held = addBackground(batch, held, 0)
		if len(batch) == 0 {
			continue
		}
		held = d.runBatch(batch, results[:0], held)
		clear(batch[:cap(batch)]) // let the jobs go
	}
}

// heldDue reports whether a held write is due now, and if none is, the
// earliest due time (zero: nothing held).
func heldDue(held []*job) (wake time.Time, due bool) {
	now := time.Now()
	for _, j := range held {
		if j.due.IsZero() || !j.due.After(now) {
			return time.Time{}, true
		}
		if wake.IsZero() || j.due.Before(wake) {
			wake = j.due
		}
	}
	return wake, false
}

// refuse fails every write held or still queued: the database is closing.
func (d *DB) refuse(held []*job) {
	closed := errors.New("database is closed")
	for _, j := range held {
		j.done <- closed
	}
	for {
		select {
		case j := <-d.jobs:
			j.done <- closed
		case j := <-d.background:
			j.done <- closed
		case j := <-d.deferred:
			j.done <- closed
		default:
			return
		}
	}
}

// fillWaited adds the queued writes a caller waits on (Write) to batch, up
// to maxBatch, without waiting.
func (d *DB) fillWaited(batch []*job) []*job {
	for len(batch) < maxBatch {
		select {
		case j := <-d.jobs:
			batch = append(batch, j)
		default:
			return batch
		}
	}
	return batch
}

// takeBackground moves the queued background writes to held, without
// waiting, up to maxBatch of them held.
func (d *DB) takeBackground(held []*job) []*job {
	for len(held) < maxBatch {
		select {
		case j := <-d.background:
			held = append(held, j)
		case j := <-d.deferred:
			held = append(held, j)
		default:
			return held
		}
	}
	return held
}

// addBackground moves the first held write to batch if the batch has spent
// less than backgroundBudget on background statements so far, and room is
// left: one at a time, since whether the next fits is known only once
// this one has run.
func addBackground(batch, held []*job, spent time.Duration) ([]*job, []*job) {
	if len(held) == 0 || len(batch) >= maxBatch || spent >= backgroundBudget {
		return batch, held
	}
	batch = append(batch, held[0])
	held[0] = nil
	return batch, held[1:]
}

// runBatch commits a batch in one transaction, each job in a savepoint so a
// failing job leaves no trace and does not fail the others. Jobs queued while
// the batch's statements ran join it before the commit: they would wait for
// that commit anyway, and one commit (one fsync, and the pages the jobs share
// written once) then serves them all. Background writes join after the
// waited-on ones, one at a time while the batch has spent less than
// backgroundBudget on them; it returns the held ones left for a later batch.
func (d *DB) runBatch(batch []*job, results []error, held []*job) []*job {
	w := d.w
	fail := func(err error) []*job {
		w.abort()
		for _, j := range batch {
			j.done <- err
		}
		return held
	}
	var spent time.Duration // in background writes' statements
	ctx := context.Background()
	began := time.Now()
	if _, err := w.begin.ExecContext(ctx); err != nil {
		return fail(fmt.Errorf("begin: %w", err))
	}
	t := &Tx{dialect: SQLite, db: d}
	// A batch of one job runs it without a savepoint: if it fails, the
	// transaction is rolled back instead.
	bare := len(batch) == 1
	for {
		for i := len(results); i < len(batch); i++ {
			j := batch[i]
			j.started = time.Now()
			switch {
			case !j.background:
				d.metrics.wait.Observe(j.started.Sub(j.queued).Seconds())
			case j.due.IsZero(): // deferred ones wait on purpose
				d.metrics.backgroundWait.Observe(j.started.Sub(j.queued).Seconds())
			}
			if err := j.ctx.Err(); err != nil {
				results = append(results, err)
				continue
			}
			if bare {
				results = append(results, j.fn(t))
				if j.background {
					spent += time.Since(j.started)
				}
				continue
			}
			signalled, handed := len(t.signals), len(t.hands)
			if _, err := w.savepoint.ExecContext(ctx); err != nil {
				return fail(fmt.Errorf("savepoint: %w", err))
			}
			err := j.fn(t)
			results = append(results, err)
			if err != nil {
				// Its writes are undone: so are its signals and hand-offs.
				t.signals = t.signals[:signalled]
				clear(t.hands[handed:])
				t.hands = t.hands[:handed]
				if _, err := w.rollbackTo.ExecContext(ctx); err != nil {
					return fail(fmt.Errorf("rollback to savepoint: %w", err))
				}
			}
			if _, err := w.release.ExecContext(ctx); err != nil {
				return fail(fmt.Errorf("release savepoint: %w", err))
			}
			if j.background {
				spent += time.Since(j.started)
			}
		}
		if bare && results[0] != nil {
			w.abort()
			batch[0].done <- results[0]
			return held
		}
		bare = false
		n := len(batch)
		batch = d.fillWaited(batch)
		held = d.takeBackground(held)
		if batch, held = addBackground(batch, held, spent); len(batch) == n {
			break
		}
	}
	committing := time.Now()
	if _, err := w.commit.ExecContext(ctx); err != nil {
		return fail(fmt.Errorf("commit: %w", err))
	}
	end := time.Now()
	d.metrics.statements.Observe(committing.Sub(began).Seconds())
	d.metrics.commit.Observe(end.Sub(committing).Seconds())
	for _, j := range batch {
		if !j.background {
			d.metrics.run.Observe(end.Sub(j.started).Seconds())
		}
	}
	d.metrics.background.Observe(spent.Seconds())
	d.metrics.commits.Inc()
	d.metrics.jobs.Observe(float64(len(batch)))
	w.walFrames(&d.metrics.frames)
	d.committed(t.signals, t.hands)
	for i, j := range batch {
		j.done <- results[i]
	}
	return held
}
