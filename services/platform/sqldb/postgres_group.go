package sqldb

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Group commit on PostgreSQL. Every Write used to be its own transaction:
// its own COMMIT, WAL flush and round trips. Now a DB has a few lanes
// (DefaultPostgresLanes; group_commit_lanes=N in the DSN, 0 for none),
// each a goroutine running one transaction at a time. A Write hands its fn
// to an idle lane; when every lane is busy it waits, and the first lane to
// finish a write takes it into its open transaction: concurrent writes
// share one COMMIT. The first write of a transaction runs as a transaction
// of its own did (its statements under its caller's context; if it fails,
// the transaction is rolled back); each later one runs in a savepoint of
// its own, whose SAVEPOINT goes ahead of its first statement in the same
// network write (beginFilter, as BEGIN): no round trip of its own. A write
// whose fn fails is rolled back to its savepoint (one round trip) and gets
// its own error; the others go on. A joined write runs under
// lock_timeout (batchLockTimeout): a lock another transaction holds makes
// it give way instead of waiting with the locks of the writes before it in
// its transaction held (two lanes, or two processes, each holding a lock
// the other's next write wants would otherwise wait for the deadlock
// detector, a second); it then runs again alone, as does a write that met
// a serialization failure or a deadlock. A joined write's statements do
// not end when its caller's context does (that would break the connection
// under the others' writes): once it has started, its caller waits for the
// commit and is told the outcome, so a caller never reports failure for a
// write that committed. If COMMIT fails with the server's answer (nothing
// was committed), every write of the transaction runs again alone.
//
// Per-thread order (RELIABILITY.md): a write that locks a row keeps the
// lock until its transaction commits, as before; a later write into the
// same transaction that wants the row already holds it, and a write in
// another transaction waits for the commit (or gives way and runs again
// alone, after it). A SetLocal holds for the rest of its own write only:
// the next write of the transaction resets the setting first.

// DefaultPostgresLanes is a process's group-commit lanes per PostgreSQL
// database: transactions in flight at once (BENCHMARKS.md, pgbatch13).
const DefaultPostgresLanes = 2

const (
	// maxBatchWrites bounds the writes of one transaction: each joined one
	// is a subtransaction, and PostgreSQL keeps 64 of a transaction's
	// subtransaction ids in shared memory before other sessions' snapshots
	// have to look them up on disk.
	maxBatchWrites = 32
	// batchLockTimeout is how long a joined write waits for a lock.
	batchLockTimeout = "50ms"
	// batchTimeout bounds a transaction's statements once they no longer
	// run under one caller's context.
	batchTimeout = 60 * time.Second
)

// errAlone tells a Write to run fn again in a transaction of its own.
var errAlone = errors.New("sqldb: run alone")

var errClosed = errors.New("database is closed")

// pgJob is a Write waiting for a lane.
type pgJob struct {
	ctx  context.Context
	fn   func(*Tx) error
	done chan error
}

// groupLanes takes group_commit_lanes out of a postgres:// DSN.
func groupLanes(dsn string) (string, int, error) {
	return intParam(dsn, "group_commit_lanes", DefaultPostgresLanes, 0, 64)
}

// startLanes starts n lanes (none: every Write is its own transaction).
func (d *DB) startLanes(n int) {
	if n == 0 || !d.pipelined {
		return
	}
	d.pgJobs = make(chan *pgJob) // unbuffered: a job is taken by a lane or not queued at all
	d.pgStop = make(chan struct{})
	for range n {
		d.pgWG.Add(1)
		go d.lane()
	}
}

func (d *DB) stopLanes() {
	if d.pgStop != nil {
		close(d.pgStop)
		d.pgWG.Wait()
	}
}

func (d *DB) lane() {
	defer d.pgWG.Done()
	for {
		select {
		case j := <-d.pgJobs:
			d.runPGBatch(j)
		case <-d.pgStop:
			return
		}
	}
}

// writePostgres hands fn to a lane (or runs it alone without lanes:
// startLanes starts none without pipelining).
func (d *DB) writePostgres(ctx context.Context, fn func(tx *Tx) error) error {
	if d.pgJobs == nil {
		return d.writePostgresAlone(ctx, fn)
	}
	j := &pgJob{ctx: ctx, fn: fn, done: make(chan error, 1)}
	d.pgWaiting.Add(1)
	select {
	case d.pgJobs <- j:
		d.pgWaiting.Add(-1)
	case <-ctx.Done():
		d.pgWaiting.Add(-1)
		return ctx.Err()
	case <-d.pgStop:
		d.pgWaiting.Add(-1)
		return errClosed
	}
	err := <-j.done
	if err == errAlone {
		d.pgAlone.Add(1)
		return d.writePostgresAlone(ctx, fn)
	}
	if p, ok := err.(fnPanic); ok {
		panic(p.v) // in the caller's goroutine, as without lanes
	}
	return err
}

// fnPanic is a panic of a write's fn, carried to its caller.
type fnPanic struct{ v any }

func (p fnPanic) Error() string { return fmt.Sprint("sqldb: write panicked: ", p.v) }

// callFn runs fn, turning a panic into an fnPanic: the write is rolled back
// and its caller panics.
func callFn(fn func(*Tx) error, t *Tx) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fnPanic{v}
		}
	}()
	return fn(t)
}

// pgBatch is a lane's open transaction.
type pgBatch struct {
	d     *DB
	ctx   context.Context
	p     *pgTx
	jobs  []*pgJob // done in p, waiting for its commit
	sigs  []string
	hands []handed // the jobs' Tx.Hand values, in job order
	sp    int      // savepoints made in p
	lt    bool     // lock_timeout is set (or pending) in p
}

func (d *DB) runPGBatch(first *pgJob) {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	b := &pgBatch{d: d, ctx: ctx}
	b.run(first)
	for len(b.jobs) < maxBatchWrites {
		select {
		case j := <-d.pgJobs:
			b.run(j)
			continue
		default:
		}
		break
	}
	b.commit()
}

// batchCtx is a joined write's statements' context: the values of the
// caller's, the lifetime of the batch's.
type batchCtx struct {
	context.Context // the batch's
	values          context.Context
}

func (c batchCtx) Value(k any) any { return c.values.Value(k) }

// run runs j in b's transaction (a new one if none is open).
func (b *pgBatch) run(j *pgJob) {
	if err := j.ctx.Err(); err != nil {
		j.done <- err
		return
	}
	if b.p == nil {
		ctx := j.ctx // the first write: its own context, as alone
		p, err := b.d.beginPipelined(ctx)
		if err != nil {
			j.done <- errAlone // it reports its own error
			return
		}
		if p.filter == nil {
			p.release()
			j.done <- errAlone
			return
		}
		b.p, b.sp, b.lt = p, 0, false
	}
	p := b.p
	first := len(b.jobs) == 0
	sets0, at0, lt0, flushes0, locals0 := len(p.sets), len(p.atCommit), b.lt, p.flushes, p.locals
	var sp string
	t := &Tx{pg: p, dialect: Postgres}
	if !first {
		// The settings the write before set (SetLocal) hold for it only.
		for _, name := range p.locals {
			p.sets = append(p.sets, preStmt{"SET LOCAL " + name + " TO DEFAULT", "SET"})
		}
		if !b.lt {
			p.sets = append(p.sets, preStmt{"SET LOCAL lock_timeout = '" + batchLockTimeout + "'", "SET"})
			b.lt = true
		}
		b.sp++
		sp = "w" + strconv.Itoa(b.sp)
		p.sets = append(p.sets, preStmt{"SAVEPOINT " + sp, "SAVEPOINT"})
		t.batch = b.ctx
	}
	p.locals = nil
	err := callFn(j.fn, t)
	if err == nil && first && j.ctx.Err() != nil {
		// Its caller's context ended before any other write joined: it
		// fails as a write alone would, and nothing of it is kept.
		err = j.ctx.Err()
	}
	if err == nil && p.failedTx() {
		// A statement failed and fn went on: the server rolled back.
		err = fmt.Errorf("commit: %w", pgx.ErrTxCommitRollback)
	}
	if err == nil {
		b.jobs = append(b.jobs, j)
		b.hands = append(b.hands, t.hands...)
		for _, s := range t.signals {
			if !slices.Contains(b.sigs, s) {
				b.sigs = append(b.sigs, s)
			}
		}
		return
	}
	p.atCommit = p.atCommit[:at0]
	switch {
	case p.flushes == flushes0 && (!first || !p.begun):
		// Nothing of it reached the server: the next write resets what
		// the one before it set.
		p.sets, b.lt, p.locals = p.sets[:sets0], lt0, locals0
	case first:
		p.rollback(j.ctx)
		p.release()
		b.p = nil
	default:
		p.sets, p.locals = nil, nil
		if rerr := p.exec(b.ctx, "ROLLBACK TO SAVEPOINT "+sp); rerr != nil {
			// The transaction is lost, with the writes before it.
			b.abort()
			j.done <- errAlone
			return
		}
	}
	switch {
	case first && j.ctx.Err() != nil:
		j.done <- j.ctx.Err()
	case isRetryable(err) || (!first && isLockTimeout(err)):
		j.done <- errAlone
	default:
		j.done <- err
	}
}

// abort rolls b's transaction back: its writes run again alone.
func (b *pgBatch) abort() {
	b.p.rollback(b.ctx)
	b.p.release()
	b.p = nil
	for _, j := range b.jobs {
		j.done <- errAlone
	}
	b.jobs, b.sigs, b.hands = nil, nil, nil
}

func (b *pgBatch) commit() {
	if b.p == nil {
		return
	}
	p := b.p
	err := p.commit(b.ctx)
	if err != nil {
		p.rollback(b.ctx)
	}
	p.release()
	switch {
	case err == nil:
		b.d.committed(b.sigs, b.hands)
		for _, j := range b.jobs {
			j.done <- nil
		}
	case len(b.jobs) == 1 && isRetryable(err):
		b.jobs[0].done <- errAlone
	case len(b.jobs) > 1 && rolledBack(err):
		// Nothing was committed: each finds its own outcome alone.
		for _, j := range b.jobs {
			j.done <- errAlone
		}
	default:
		for _, j := range b.jobs {
			j.done <- fmt.Errorf("commit: %w", err)
		}
	}
}

// failedTx reports whether the server holds the transaction failed (a
// statement failed and fn went on).
func (p *pgTx) failedTx() bool {
	failed := false
	_ = p.raw(func(c *pgx.Conn) error {
		failed = c.PgConn().TxStatus() == 'E'
		return nil
	})
	return failed
}

// rolledBack reports a COMMIT the server answered with an error or a
// rollback: nothing of the transaction was kept.
func rolledBack(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) || errors.Is(err, pgx.ErrTxCommitRollback)
}

func isLockTimeout(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55P03" // lock_not_available
}
