package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
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
// read and reset, the C counter being 32 bits) to total, and returns them.
func (w *sqliteWriter) walFrames(total interface{ Add(uint64) uint64 }) (frames int64) {
	_ = w.conn.Raw(func(dc any) error {
		st, ok := dc.(sqlite.DBStatus)
		if !ok {
			return nil
		}
		n, _, err := st.Status(sqlite.DBStatusCacheWrite, true)
		if err == nil && n > 0 {
			total.Add(uint64(n))
			frames = int64(n)
		}
		return err
	})
	return frames
}

type job struct {
	ctx  context.Context
	fn   func(tx *Tx) error
	done chan error
	due  time.Time // WriteDeferred: when it runs even if no other write came

	queued, started time.Time // Write: when it was queued, when its statements started
}

// jobPool keeps the jobs of finished writes, each with its channel (3
// allocations a write fewer). A job goes back only once its caller has its
// outcome: the writer sends on done as its last use of a job.
type jobPool struct{ p sync.Pool }

var jobs jobPool

func newJob(ctx context.Context, fn func(tx *Tx) error) *job {
	j, _ := jobs.p.Get().(*job)
	if j == nil {
		j = &job{done: make(chan error, 1)}
	}
	j.ctx, j.fn = ctx, fn
	return j
}

func (p *jobPool) put(j *job) {
	*j = job{done: j.done} // done is empty: its one value was received
	p.p.Put(j)
}

const maxBatch = 128

func (d *DB) writer() {
	defer d.wg.Done()
	batch := make([]*job, 0, maxBatch)
	results := make([]error, 0, maxBatch)
	// Deferred writes (WriteDeferred) wait here, at most maxBatch/2 of
	// them, for another write to start a batch, or for the earliest of
	// their due times (due): a short delay is not held to a longer one
	// that came first.
	var waiting []*job
	var due time.Time
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-d.stop:
			for _, j := range waiting {
				j.done <- errors.New("database is closed")
			}
			for {
				select {
				case j := <-d.jobs:
					j.done <- errors.New("database is closed")
				case j := <-d.deferred:
					j.done <- errors.New("database is closed")
				default:
					return
				}
			}
		case j := <-d.deferred:
			if waiting = append(waiting, j); len(waiting) == 1 || j.due.Before(due) {
				due = j.due
				timer.Reset(time.Until(due))
			}
			if len(waiting) < maxBatch/2 {
				continue
			}
			batch = append(batch[:0], waiting...)
		case <-timer.C:
			batch = append(batch[:0], waiting...)
		case j := <-d.jobs:
			batch = append(append(batch[:0], j), waiting...)
		}
		clear(waiting)
		waiting = waiting[:0]
		timer.Stop()
		batch = d.fill(batch)
		d.runBatch(batch, results[:0])
		clear(batch[:cap(batch)]) // let the jobs go
		d.afterBatch()
	}
}

// fill adds the queued jobs, deferred ones included, to batch, up to
// maxBatch, without waiting.
func (d *DB) fill(batch []*job) []*job {
	for len(batch) < maxBatch {
		select {
		case j := <-d.jobs:
			batch = append(batch, j)
		case j := <-d.deferred:
			batch = append(batch, j)
		default:
			return batch
		}
	}
	return batch
}

// runBatch commits a batch in one transaction, each job in a savepoint so a
// failing job leaves no trace and does not fail the others. Jobs queued while
// the batch's statements ran join it before the commit: they would wait for
// that commit anyway, and one commit (one fsync, and the pages the jobs share
// written once) then serves them all.
func (d *DB) runBatch(batch []*job, results []error) {
	w := d.w
	t := &Tx{dialect: SQLite, db: d}
	fail := func(err error) {
		w.abort()
		t.undoSeqs(0)
		for _, j := range batch {
			j.done <- err
		}
	}
	ctx := context.Background()
	began := time.Now()
	if _, err := w.begin.ExecContext(ctx); err != nil {
		fail(fmt.Errorf("begin: %w", err))
		return
	}
	// A batch of one job runs it without a savepoint: if it fails, the
	// transaction is rolled back instead.
	bare := len(batch) == 1
	for {
		for i := len(results); i < len(batch); i++ {
			j := batch[i]
			if !j.queued.IsZero() {
				j.started = time.Now()
				d.metrics.wait.Observe(j.started.Sub(j.queued).Seconds())
			}
			if err := j.ctx.Err(); err != nil {
				results = append(results, err)
				continue
			}
			if bare {
				results = append(results, j.fn(t))
				continue
			}
			signalled, handed, counted := len(t.signals), len(t.hands), len(t.seqUndo)
			if _, err := w.savepoint.ExecContext(ctx); err != nil {
				fail(fmt.Errorf("savepoint: %w", err))
				return
			}
			err := j.fn(t)
			results = append(results, err)
			if err != nil {
				// Its writes are undone: so are its signals and hand-offs.
				t.signals = t.signals[:signalled]
				clear(t.hands[handed:])
				t.hands = t.hands[:handed]
				t.undoSeqs(counted)
				if _, err := w.rollbackTo.ExecContext(ctx); err != nil {
					fail(fmt.Errorf("rollback to savepoint: %w", err))
					return
				}
			}
			if _, err := w.release.ExecContext(ctx); err != nil {
				fail(fmt.Errorf("release savepoint: %w", err))
				return
			}
		}
		if bare && results[0] != nil {
			w.abort()
			t.undoSeqs(0)
			batch[0].done <- results[0]
			return
		}
		bare = false
		n := len(batch)
		if batch = d.fill(batch); len(batch) == n {
			break
		}
	}
	committing := time.Now()
	if _, err := w.commit.ExecContext(ctx); err != nil {
		fail(fmt.Errorf("commit: %w", err))
		return
	}
	end := time.Now()
	d.metrics.statements.Observe(committing.Sub(began).Seconds())
	d.metrics.commit.Observe(end.Sub(committing).Seconds())
	for _, j := range batch {
		if !j.started.IsZero() {
			d.metrics.run.Observe(end.Sub(j.started).Seconds())
		}
	}
	d.metrics.commits.Inc()
	d.metrics.jobs.Observe(float64(len(batch)))
	if frames := w.walFrames(&d.metrics.frames); d.ckpt != nil {
		d.ckpt.committed(frames)
	}
	d.committed(t.signals, t.hands)
	for i, j := range batch {
		j.done <- results[i]
	}
}
