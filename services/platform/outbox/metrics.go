package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Backlog is the outbox's waiting rows: how many events are written but not
// yet acknowledged by JetStream, and when the oldest of them was written
// (zero when none waits). On SQLite, rows already published but not yet
// deleted (the relay deletes once a second) do not count; on PostgreSQL the
// last batch a relay published counts until its next round deletes it
// (within Relay.Linger).
func (r *Relay) Backlog(ctx context.Context) (rows int64, oldest time.Time, err error) {
	var first sql.NullInt64
	if err := r.db.QueryRow(ctx, `SELECT count(*), min(created_at) FROM outbox WHERE seq > ?`, r.publishedMark.Load()).
		Scan(&rows, &first); err != nil {
		return 0, time.Time{}, fmt.Errorf("outbox backlog: %w", err)
	}
	if first.Valid {
		oldest = time.UnixMicro(first.Int64)
	}
	return rows, oldest, nil
}

var (
	backlogDesc = prometheus.NewDesc("clinicchat_outbox_backlog_events",
		"Events written to the service's outbox and not yet acknowledged by JetStream (read at scrape).", nil, nil)
	oldestDesc = prometheus.NewDesc("clinicchat_outbox_oldest_event_age_seconds",
		"Age of the oldest event waiting in the outbox (0 when none waits).", nil, nil)
	publishedDesc = prometheus.NewDesc("clinicchat_outbox_published_events_total",
		"Events the relay published and JetStream acknowledged.", nil, nil)
	waitsDesc = prometheus.NewDesc("clinicchat_outbox_publish_waits_total",
		"Times the relay waited for JetStream's acknowledgements of the publishes it had in flight: "+
			"the sequential round trips of its publishing (divided by the events, round trips per event).", nil, nil)
	acksDesc = prometheus.NewDesc("clinicchat_outbox_acks_total",
		"JetStream acknowledgements the relay read: one per event published on its own, one per fast batch "+
			"(divided by the events, PubAcks per event).", nil, nil)
	readDesc = prometheus.NewDesc("clinicchat_outbox_read_events_total",
		"Events the relay read from the outbox table: on SQLite only those its commit did not hand over "+
			"(after a restart, a gap, a full hand-off queue or a failed publish); on PostgreSQL those whose payload their commit did not hand over (another replica's, a restart's), and again after a failure.", nil, nil)
)

// relayStats counts the relay's publishing (read at scrape).
type relayStats struct {
	published atomic.Int64 // rows acknowledged
	waits     atomic.Int64 // waits for the acknowledgements of what is in flight
	acks      atomic.Int64 // acknowledgements read: one per row on its own, one per fast batch
	loaded    atomic.Int64 // rows read from the table with their payload (not handed over)
	// wait is each row's time from its write (created_at, inside the
	// writer's transaction) to the relay sending it: the rest of that
	// transaction, its commit, the relay's wake-up and read, and the
	// rounds ahead of it; ack is the time from sending a round to its
	// last acknowledgement, once per acknowledged row. handoff is a
	// handed-over row's time from its commit's hand-off to being sent (SQLite):
	// the relay's wake-up and the publishes ahead of it, without the commit.
	wait, ack, handoff prometheus.Histogram
}

// relayBuckets are the relay histograms' buckets, in seconds.
var relayBuckets = []float64{.0001, .00025, .0005, .001, .002, .003, .005, .0075, .01, .015, .02, .03, .05, .1, .25, 1, 5}

func newRelayStats() relayStats {
	return relayStats{
		wait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "clinicchat_outbox_relay_wait_seconds", Buckets: relayBuckets,
			Help: "Time from an outbox row's write (inside its transaction) to the relay sending it to JetStream."}),
		ack: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "clinicchat_outbox_relay_ack_seconds", Buckets: relayBuckets,
			Help: "Time from the relay sending a round of rows to their acknowledgement by JetStream, per row."}),
		handoff: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "clinicchat_outbox_relay_handoff_seconds", Buckets: relayBuckets,
			Help: "Time from the commit that handed an outbox row to the relay (SQLite) to the relay sending it to JetStream."}),
	}
}

// Stats returns how many rows r has published (acknowledged) and how many
// times it waited for acknowledgements: waits/published is its sequential
// round trips per event.
func (r *Relay) Stats() (published, waits int64) {
	return r.stats.published.Load(), r.stats.waits.Load()
}

// Acks returns how many acknowledgements r has read from JetStream: one
// per row published on its own, one per fast batch.
func (r *Relay) Acks() int64 { return r.stats.acks.Load() }

// Collector reports the outbox backlog at every scrape, labelled with
// service (one query on the outbox, bounded by a 2 s timeout).
func (r *Relay) Collector(service string) prometheus.Collector {
	return prometheus.WrapCollectorWith(prometheus.Labels{"service": service}, backlogCollector{r})
}

type backlogCollector struct{ r *Relay }

func (c backlogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- backlogDesc
	ch <- oldestDesc
	ch <- publishedDesc
	ch <- waitsDesc
	ch <- acksDesc
	ch <- readDesc
	c.r.stats.wait.Describe(ch)
	c.r.stats.ack.Describe(ch)
	c.r.stats.handoff.Describe(ch)
}

func (c backlogCollector) Collect(ch chan<- prometheus.Metric) {
	published, waits := c.r.Stats()
	ch <- prometheus.MustNewConstMetric(publishedDesc, prometheus.CounterValue, float64(published))
	ch <- prometheus.MustNewConstMetric(waitsDesc, prometheus.CounterValue, float64(waits))
	ch <- prometheus.MustNewConstMetric(acksDesc, prometheus.CounterValue, float64(c.r.stats.acks.Load()))
	ch <- prometheus.MustNewConstMetric(readDesc, prometheus.CounterValue, float64(c.r.stats.loaded.Load()))
	c.r.stats.wait.Collect(ch)
	c.r.stats.ack.Collect(ch)
	c.r.stats.handoff.Collect(ch)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, oldest, err := c.r.Backlog(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(backlogDesc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(backlogDesc, prometheus.GaugeValue, float64(n))
	age := 0.0
	if !oldest.IsZero() {
		age = max(time.Since(oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(oldestDesc, prometheus.GaugeValue, age)
}
