// Package debugserver is the operator-only listeners. --metrics-addr serves
// Prometheus /metrics (StartMetrics) for the cluster's Prometheus.
// --debug-addr serves net/http/pprof profiles and the runtime's metrics, so
// a production profile is one command away (`go tool pprof
// http://ADDR/debug/pprof/profile?seconds=30`). Each is off unless an
// address is configured; the debug listener belongs on loopback or a port no
// Service exposes: profiles show code paths and heap contents, not PHI by
// design, but nothing about them is for the public.
package debugserver

import (
	"context"
	"errors"
	"expvar"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"regexp"
	"runtime/metrics"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Handler serves /debug/pprof/… and /debug/vars (expvar: memstats, the
// command line) and /debug/metrics (every runtime/metrics sample as text).
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/debug/vars", expvar.Handler())
	mux.HandleFunc("/debug/metrics", runtimeMetrics)
	return mux
}

// runtimeMetrics writes every runtime/metrics sample, one "name value" line
// each (histograms as their count of buckets and total count).
func runtimeMetrics(w http.ResponseWriter, _ *http.Request) {
	descs := metrics.All()
	samples := make([]metrics.Sample, len(descs))
	for i := range descs {
		samples[i].Name = descs[i].Name
	}
	metrics.Read(samples)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	for _, s := range samples {
		switch s.Value.Kind() {
		case metrics.KindUint64:
			fmt.Fprintf(w, "%s %d\n", s.Name, s.Value.Uint64())
		case metrics.KindFloat64:
			fmt.Fprintf(w, "%s %g\n", s.Name, s.Value.Float64())
		case metrics.KindFloat64Histogram:
			h := s.Value.Float64Histogram()
			var n uint64
			for _, c := range h.Counts {
				n += c
			}
			fmt.Fprintf(w, "%s histogram buckets=%d count=%d\n", s.Name, len(h.Counts), n)
		}
	}
}

// GoCollector is the Go runtime's collector of every /metrics: the default
// series (memstats, goroutines, GC pause summary) plus the runtime's
// latency histograms, read at scrape and costing nothing per event:
// go_sched_latencies_seconds (a runnable goroutine's wait for a CPU: the
// run queue), go_sched_pauses_{stopping,total}_{gc,other}_seconds (the
// stop-the-world pauses), and the GC's CPU and cycle counters
// (go_cpu_classes_gc_*, go_gc_cycles_*). They tell a latency tail made in
// the process's run queue or its GC from one made elsewhere.
func GoCollector() prometheus.Collector {
	return collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
		collectors.GoRuntimeMetricsRule{Matcher: goLatencyMetrics}))
}

// goLatencyMetrics are the runtime/metrics names GoCollector adds.
var goLatencyMetrics = regexp.MustCompile(`^(/sched/latencies:seconds|/sched/pauses/.*|/cpu/classes/gc/.*|/cpu/classes/total:cpu-seconds|/gc/cycles/.*)$`)

// MetricsHandler serves /metrics from g in the Prometheus text format. A
// collector that fails (the database or NATS unreachable at scrape) drops
// its own series and the rest are still served.
func MetricsHandler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	return mux
}

// StartMetrics listens on addr (--metrics-addr) and serves MetricsHandler
// until Stop. An empty addr starts nothing and returns a nil *Server. The
// metrics carry no PHI (ids are never label values), but the listener is
// for the cluster's Prometheus, not the public.
func StartMetrics(addr string, g prometheus.Gatherer, log *zap.Logger) (*Server, error) {
	if addr == "" {
		return nil, nil
	}
	s, err := serve(addr, MetricsHandler(g))
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	log.Info("metrics listener on", zap.String("metrics_addr", s.Addr))
	return s, nil
}

// Server is a running debug or metrics listener.
type Server struct {
	srv  *http.Server
	done chan error
	// Addr is the bound address (useful with port 0).
	Addr string
}

// Start listens on addr and serves Handler until Stop. An empty addr starts
// nothing and returns a nil *Server (whose Stop does nothing).
func Start(addr string, log *zap.Logger) (*Server, error) {
	if addr == "" {
		return nil, nil
	}
	s, err := serve(addr, Handler())
	if err != nil {
		return nil, fmt.Errorf("--debug-addr: %w", err)
	}
	log.Warn("operator debug listener on: keep it off public networks", zap.String("debug_addr", s.Addr))
	return s, nil
}

func serve(addr string, h http.Handler) (*Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
			// A CPU profile or trace runs for as long as it asks (seconds=N).
			IdleTimeout: time.Minute},
		done: make(chan error, 1),
		Addr: lis.Addr().String(),
	}
	go func() {
		err := s.srv.Serve(lis)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	return s, nil
}

// Stop closes the listener and its connections.
func (s *Server) Stop() error {
	if s == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		_ = s.srv.Close()
	}
	return <-s.done
}
