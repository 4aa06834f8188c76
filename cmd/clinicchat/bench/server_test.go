package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// metricsServer serves body as a Prometheus text endpoint.
func metricsServer(t *testing.T, body string) string {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(s.Close)
	return s.URL + "/metrics"
}

// A distributed deployment's figures are the sums over its processes'
// /metrics: CPU, RSS, commits and what is still queued.
func TestServerWatchSumsSeveralMetricsURLs(t *testing.T) {
	ctx := context.Background()
	gateway := metricsServer(t, `# HELP process_cpu_seconds_total x
process_cpu_seconds_total 1.5
process_resident_memory_bytes 1000
clinicchat_nats_consumer_pending_messages{durable="gateway"} 2
`)
	delivery := metricsServer(t, `process_cpu_seconds_total 2.25
process_resident_memory_bytes 500
clinicchat_sqldb_commits_total{db="delivery"} 40
clinicchat_outbox_backlog_events 3
clinicchat_nats_consumer_ack_pending_messages{durable="reads"} 1
`)
	conversation := metricsServer(t, `process_cpu_seconds_total 0.25
process_resident_memory_bytes 250
clinicchat_sqldb_commits_total{db="conversation"} 2
`)
	w := newServerWatch(0, gateway+", "+delivery+","+conversation+",", http.DefaultClient)
	if len(w.metrics) != 3 {
		t.Fatalf("URLs %q: want 3", w.metrics)
	}
	cpu, rss, err := w.metricsSample(ctx)
	if err != nil || cpu != 4 || rss != 1750 {
		t.Fatalf("sample: cpu %v rss %v err %v; want 4 s, 1750 bytes", cpu, rss, err)
	}
	if n, found, err := w.backlog(ctx); err != nil || !found || n != 6 {
		t.Fatalf("backlog %v (found %v, err %v); want 6", n, found, err)
	}
	if c := w.commits(ctx); c != 42 {
		t.Fatalf("commits %v; want 42", c)
	}

	// Every process must give its CPU and RSS: one without fails the
	// sample, naming it, rather than leaving it out of the sum.
	nats := metricsServer(t, "gnatsd_varz_in_msgs 7\n")
	w = newServerWatch(0, gateway+","+nats, http.DefaultClient)
	if _, _, err := w.metricsSample(ctx); err == nil || !strings.Contains(err.Error(), nats) {
		t.Fatalf("sample with %s: err %v; want one naming it", nats, err)
	}
}

// Each window of waitQuiet scrapes every process once; a deployment of
// several is quiet at 5% of a core each. Here each process uses 10 ms of
// CPU a scrape (its /metrics), 30 ms a 250 ms window together: above 5% of
// one core (12.5 ms), under 5% of each of three (37.5 ms).
func TestServerWatchQuietIsPerProcess(t *testing.T) {
	var urls []string
	for range 3 {
		var scrapes atomic.Int64
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, "process_cpu_seconds_total %.2f\nprocess_resident_memory_bytes 100\n", 0.01*float64(scrapes.Add(1)))
		}))
		t.Cleanup(s.Close)
		urls = append(urls, s.URL)
	}
	w := newServerWatch(0, strings.Join(urls, ","), http.DefaultClient)
	if _, err := w.waitQuiet(context.Background(), 10*time.Second); err != nil {
		t.Fatalf("three processes at 10 ms a scrape: %v; want quiet", err)
	}
}
