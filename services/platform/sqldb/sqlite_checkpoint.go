package sqldb

import (
	"context"
	"database/sql"
	"sync/atomic"
	"time"
)

// SQLite's WAL checkpoints, off the writer's COMMIT.
//
// By default SQLite checkpoints inside the COMMIT that takes the WAL past
// 1,000 pages (wal_autocheckpoint): that commit copies the WAL's pages into
// the database file and fsyncs it, on the one writer connection, and every
// write queued behind it waits. Here the writer runs with
// wal_autocheckpoint=0 and a checkpointer goroutine, on a connection of its
// own, runs PASSIVE checkpoints instead (they wait for no reader or writer,
// and no writer waits for them) once the writer has written
// checkpointFrames pages since the last one.
//
// A checkpoint beside continuous commits never catches up with the last of
// them, and the WAL starts again from its beginning only at a write that
// begins when every frame in it has been checkpointed: so once the WAL holds
// restartFrames or more, the checkpointer asks the writer to checkpoint the
// few frames committed since its own checkpoint, between two batches; the
// next batch then writes at the start of the WAL again. The writer's part is
// those frames and one fsync of the database file, instead of all of them.
//
// Durability is SQLite's: the checkpointer's connection is
// synchronous=FULL, so a checkpoint fsyncs the WAL before copying and the
// database file before it marks frames as checkpointed (and so before the
// WAL can be overwritten).
//
// Every 2,000 frames, and the WAL started again at 4,000 (its size as
// before): a checkpoint writes each page once however many frames hold it,
// so checkpoints half as often write ~35 % fewer pages into the database
// file and read as many fewer from the WAL (BENCHMARKS.md, wal19).
//
// Variables for tests, which make them small.
var (
	checkpointFrames int64 = 2000
	restartFrames    int64 = 2 * checkpointFrames
)

// backgroundCheckpoints is false in tests and benchmarks that measure
// SQLite's own checkpoints (in the COMMIT) against the checkpointer.
var backgroundCheckpoints = true

type checkpointer struct {
	pool *sql.DB
	conn *sql.Conn
	kick chan struct{}
	// pending: WAL frames the writer committed since the checkpointer last
	// started a checkpoint.
	pending atomic.Int64
	// restart: the writer is to checkpoint the WAL's last frames between
	// two batches (the WAL holds restartFrames or more).
	restart atomic.Bool
	// last: the WAL's frames (log) and how many of them were checkpointed,
	// as the last checkpoint saw them.
	lastLog, lastDone atomic.Int64
}

func newCheckpointer(ctx context.Context, pool *sql.DB) (*checkpointer, error) {
	pool.SetMaxOpenConns(1)
	pool.SetMaxIdleConns(1)
	pool.SetConnMaxLifetime(0)
	c, err := pool.Conn(ctx)
	if err != nil {
		return nil, err
	}
	return &checkpointer{pool: pool, conn: c, kick: make(chan struct{}, 1)}, nil
}

func (c *checkpointer) close() error {
	_ = c.conn.Close()
	return c.pool.Close()
}

// committed is the writer's report of a commit's frames.
func (c *checkpointer) committed(frames int64) {
	if c.pending.Add(frames) >= checkpointFrames {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

// run is the checkpointer goroutine, until d.stop.
func (d *DB) checkpoints() {
	defer d.wg.Done()
	c := d.ckpt
	for {
		select {
		case <-d.stop:
			return
		case <-c.kick:
		}
		c.pending.Store(0)
		log, _, ok := d.checkpoint(c.conn, "checkpointer")
		if ok && log >= restartFrames {
			c.restart.Store(true)
		}
	}
}

// checkpoint runs a PASSIVE checkpoint on conn and counts it under by. It
// returns the WAL's frames and those checkpointed, as SQLite reports them.
func (d *DB) checkpoint(conn *sql.Conn, by string) (log, done int64, ok bool) {
	start := time.Now()
	var busy int64
	err := conn.QueryRowContext(context.Background(), "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &log, &done)
	took := time.Since(start)
	if err == nil && busy == 1 && log < 0 {
		// The other connection was checkpointing: nothing was done. The
		// writer tries again after its next batch.
		if by == "writer" {
			d.ckpt.restart.Store(true)
		}
		return 0, 0, false
	}
	if err != nil || log < 0 {
		d.metrics.checkpointErrors.Inc()
		return 0, 0, false
	}
	c := d.ckpt
	prevLog, prevDone := c.lastLog.Swap(log), c.lastDone.Swap(done)
	copied := done
	if log >= prevLog && done >= prevDone { // the same WAL, not started again since
		copied = done - prevDone
	}
	d.metrics.checkpoints.WithLabelValues(by).Inc()
	d.metrics.checkpointFrames.WithLabelValues(by).Add(float64(copied))
	d.metrics.checkpointTime.WithLabelValues(by).Observe(took.Seconds())
	return log, done, true
}

// afterBatch runs on the writer between two batches: the writer's part of
// starting the WAL again, when the checkpointer asked for it.
func (d *DB) afterBatch() {
	if d.ckpt == nil || !d.ckpt.restart.CompareAndSwap(true, false) {
		return
	}
	d.checkpoint(d.w.conn, "writer")
}
