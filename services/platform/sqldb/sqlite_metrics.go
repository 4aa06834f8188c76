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
}

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
	ch <- c.d.metrics.framesDesc
}

func (c dbCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.d.metrics
	if m == nil {
		return
	}
	m.commits.Collect(ch)
	m.jobs.Collect(ch)
	ch <- prometheus.MustNewConstMetric(m.framesDesc, prometheus.CounterValue, float64(m.frames.Load()))
}
