package sqldb

import (
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// sqliteMetrics counts a SQLite database's group commits: how many, how
// many writes each carried, and the WAL frames (pages) they wrote. Commits
// per message and frames per commit are what a send costs in fsyncs and
// pwrites (BENCHMARKS.md, sqlite10).
type sqliteMetrics struct {
	commits    prometheus.Counter
	jobs       prometheus.Histogram
	framesDesc *prometheus.Desc
	frames     atomic.Uint64 // WAL frames written by the writer (counted after each commit)

	// wait: a Write's time in the queue (queued → its statements start);
	// run: from its statements' start to its commit's end (the rest of the
	// batch's statements and the COMMIT). Deferred writes are not counted
	// (they wait on purpose). statements and commit: each batch's time in
	// the jobs' statements (savepoints included) and in COMMIT (the WAL
	// frames' pwrites and the fsync).
	wait, run, statements, commit prometheus.Histogram

	// walSync: each fsync of the WAL (the writer's commits, the
	// checkpointer's before it copies; sqlite_walsync.go).
	walSync prometheus.Histogram

	// WAL checkpoints (sqlite_checkpoint.go), by "checkpointer" (its own
	// connection, beside the writer) or "writer" (between two batches, to
	// let the WAL start again): how many, the frames each copied into the
	// database file, how long each took; walDesc is the WAL's size in
	// frames as the last checkpoint saw it.
	checkpoints, checkpointFrames *prometheus.CounterVec
	checkpointTime                *prometheus.HistogramVec
	checkpointErrors              prometheus.Counter
	walDesc                       *prometheus.Desc
}

// latencyBuckets spans 25 µs to ~0.3 s in steps of ×1.5.
var latencyBuckets = prometheus.ExponentialBuckets(25e-6, 1.5, 24)

func newSQLiteMetrics(name string) *sqliteMetrics {
	labels := prometheus.Labels{"db": name}
	return &sqliteMetrics{
		commits: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "clinicchat_sqldb_commits_total",
			Help:        "Durable commits (fsyncs of the WAL) of the SQLite database's writer; each carries one or more writes (group commit).",
			ConstLabels: labels,
		}),
		jobs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "clinicchat_sqldb_batch_jobs",
			Help:        "Writes (DB.Write calls) carried by each commit of the SQLite database's writer.",
			ConstLabels: labels,
			Buckets:     []float64{1, 2, 4, 8, 16, 32, 64, 128},
		}),
		wait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "clinicchat_sqldb_write_wait_seconds",
			Help:        "Time a write (DB.Write) waited in the SQLite writer's queue before its statements ran: behind the batch running when it came.",
			ConstLabels: labels, Buckets: latencyBuckets,
		}),
		run: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "clinicchat_sqldb_write_run_seconds",
			Help:        "Time from a write's (DB.Write) statements' start to its durable commit: its statements, the rest of its batch's and the COMMIT.",
			ConstLabels: labels, Buckets: latencyBuckets,
		}),
		statements: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "clinicchat_sqldb_batch_statements_seconds",
			Help:        "Time each SQLite group commit spent in its writes' statements (savepoints included), BEGIN to COMMIT.",
			ConstLabels: labels, Buckets: latencyBuckets,
		}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "clinicchat_sqldb_batch_commit_seconds",
			Help:        "Time each SQLite group commit spent in COMMIT: writing the WAL frames and the fsync.",
			ConstLabels: labels, Buckets: latencyBuckets,
		}),
		walSync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "clinicchat_sqldb_wal_sync_seconds",
			Help:        "Time each fsync of the SQLite database's WAL took (a commit's, or a checkpoint's before it copies).",
			ConstLabels: labels, Buckets: latencyBuckets,
		}),
		checkpoints: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "clinicchat_sqldb_checkpoints_total",
			Help:        "PASSIVE WAL checkpoints of the SQLite database, by the checkpointer's own connection or by the writer between two batches (to let the WAL start again).",
			ConstLabels: labels,
		}, []string{"by"}),
		checkpointFrames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "clinicchat_sqldb_checkpoint_frames_total",
			Help:        "WAL frames (pages) the SQLite database's checkpoints copied into the database file.",
			ConstLabels: labels,
		}, []string{"by"}),
		checkpointTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:        "clinicchat_sqldb_checkpoint_seconds",
			Help:        "Time each WAL checkpoint of the SQLite database took (copying the frames, the fsyncs).",
			ConstLabels: labels, Buckets: latencyBuckets,
		}, []string{"by"}),
		checkpointErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "clinicchat_sqldb_checkpoint_errors_total",
			Help:        "WAL checkpoints of the SQLite database that failed.",
			ConstLabels: labels,
		}),
		walDesc: prometheus.NewDesc("clinicchat_sqldb_wal_size_frames",
			"Frames in the SQLite database's WAL as its last checkpoint saw them.", nil, labels),
		framesDesc: prometheus.NewDesc("clinicchat_sqldb_wal_frames_total",
			"WAL frames (database pages) written by the SQLite database's commits.", nil, labels),
	}
}

// dbName is the label of the database at path: its file name without
// ".db" (conversation, delivery…).
func dbName(path string) string {
	return strings.TrimSuffix(filepath.Base(path), ".db")
}

// Collector reports the SQLite database's commits, writes per commit and
// WAL frames written (nothing on PostgreSQL, which group-commits itself).
func (d *DB) Collector() prometheus.Collector { return dbCollector{d} }

type dbCollector struct{ d *DB }

func (c dbCollector) Describe(ch chan<- *prometheus.Desc) {
	if c.d.metrics == nil {
		return
	}
	c.d.metrics.commits.Describe(ch)
	c.d.metrics.jobs.Describe(ch)
	c.d.metrics.wait.Describe(ch)
	c.d.metrics.run.Describe(ch)
	c.d.metrics.statements.Describe(ch)
	c.d.metrics.commit.Describe(ch)
	c.d.metrics.walSync.Describe(ch)
	c.d.metrics.checkpoints.Describe(ch)
	c.d.metrics.checkpointFrames.Describe(ch)
	c.d.metrics.checkpointTime.Describe(ch)
	c.d.metrics.checkpointErrors.Describe(ch)
	ch <- c.d.metrics.walDesc
	ch <- c.d.metrics.framesDesc
}

func (c dbCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.d.metrics
	if m == nil {
		return
	}
	m.commits.Collect(ch)
	m.jobs.Collect(ch)
	m.wait.Collect(ch)
	m.run.Collect(ch)
	m.statements.Collect(ch)
	m.commit.Collect(ch)
	m.walSync.Collect(ch)
	m.checkpoints.Collect(ch)
	m.checkpointFrames.Collect(ch)
	m.checkpointTime.Collect(ch)
	m.checkpointErrors.Collect(ch)
	var wal float64
	if c.d.ckpt != nil {
		wal = float64(c.d.ckpt.lastLog.Load())
	}
	ch <- prometheus.MustNewConstMetric(m.walDesc, prometheus.GaugeValue, wal)
	ch <- prometheus.MustNewConstMetric(m.framesDesc, prometheus.CounterValue, float64(m.frames.Load()))
}
