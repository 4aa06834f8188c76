package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat times
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// serverWatch samples the server's CPU and memory, from /proc/<pid> on
// this machine or from the process_* series of its /metrics. A distributed
// deployment is several processes, each with its /metrics (the gateway's,
// each service's): given them all, the figures are the deployment's, each
// series summed over them (the NATS server's and the database's own CPU and
// memory are not among them).
type serverWatch struct {
	pid     int
	metrics []string
	hc      *http.Client

	stopOnce sync.Once
	stopCh   chan struct{}
	done     chan struct{}

	mu      sync.Mutex
	cpu0    float64 // seconds
	peakRSS float64 // bytes
	ok      bool
	// commits0 is the database commits at start (clinicchat_sqldb_commits_total
	// on /metrics, all databases); -1 without a metrics URL.
	commits0 float64
}

// newServerWatch watches pid, or else the /metrics URLs of metricsURLs
// (comma separated).
func newServerWatch(pid int, metricsURLs string, hc *http.Client) *serverWatch {
	var urls []string
	for u := range strings.SplitSeq(metricsURLs, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	return &serverWatch{pid: pid, metrics: urls, hc: hc, stopCh: make(chan struct{}), done: make(chan struct{})}
}

func (w *serverWatch) enabled() bool { return w.pid > 0 || len(w.metrics) > 0 }

// start records the CPU used so far and samples RSS every 100 ms, or
// every second from several metrics URLs (a distributed deployment's: a
// round of scrapes is several processes' work, and the run's figures
// would count it).
func (w *serverWatch) start(ctx context.Context) error {
	if !w.enabled() {
		close(w.done)
		return nil
	}
	cpu, rss, err := w.sample(ctx)
	if err != nil {
		close(w.done)
		return fmt.Errorf("server figures: %w", err)
	}
	w.cpu0, w.peakRSS, w.ok = cpu, rss, true
	w.commits0 = w.commits(ctx)
	go func() {
		defer close(w.done)
		every := 100 * time.Millisecond
		if len(w.metrics) > 1 {
			every = time.Second
		}
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-w.stopCh:
				return
			case <-t.C:
				if _, rss, err := w.sample(ctx); err == nil {
					w.mu.Lock()
					w.peakRSS = max(w.peakRSS, rss)
					w.mu.Unlock()
				}
			}
		}
	}()
	return nil
}

func (w *serverWatch) stop() {
	w.stopOnce.Do(func() { close(w.stopCh) })
	<-w.done
}

// figures is the CPU per message since start and the peak RSS.
func (w *serverWatch) figures(ctx context.Context, messages int) (ServerFigures, bool) {
	if !w.ok || messages == 0 {
		return ServerFigures{}, false
	}
	cpu, rss, err := w.sample(ctx)
	if err != nil {
		return ServerFigures{}, false
	}
	w.stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	peak := max(w.peakRSS, rss)
	if w.pid > 0 {
		if hwm, err := procHWM(w.pid); err == nil {
			peak = max(peak, hwm)
		}
	}
	return ServerFigures{CPUMsPerMessage: (cpu - w.cpu0) * 1000 / float64(messages), PeakRSSMiB: peak / (1 << 20)}, true
}

// finish is the run's server figures for n messages (nil when not
// measured): figures, then on until the server is quiet again.
func (w *serverWatch) finish(ctx context.Context, n int, lastAck time.Time) *ServerFigures {
	figures, ok := w.figures(ctx, n)
	if !ok {
		return nil
	}
	if at, err := w.waitCaughtUp(ctx, time.Minute); err == nil {
		figures.CaughtUpAfterLastAckS = max(at.Sub(lastAck).Seconds(), 0)
	}
	if lastBusy, err := w.waitQuiet(ctx, time.Minute); err == nil {
		if cpu, _, err := w.sample(ctx); err == nil {
			figures.CPUMsPerMessageUntilIdle = (cpu - w.cpu0) * 1000 / float64(n)
			figures.BusyAfterLastAckS = max(lastBusy.Sub(lastAck).Seconds(), 0)
		}
		if c := w.commits(ctx); c >= 0 && w.commits0 >= 0 {
			figures.CommitsPerMessage = (c - w.commits0) / float64(n)
		}
	}
	return &figures
}

// waitQuiet waits until the server has used under 5% of a core in each of
// four consecutive 250 ms windows (a deployment of several processes 5% for
// each: every window's samples are a scrape of each, and the scrapes alone
// kept six processes above 5% together), at most maxWait, and returns when
// it went quiet: the end of the last busy window, or the call if there was
// none.
func (w *serverWatch) waitQuiet(ctx context.Context, maxWait time.Duration) (time.Time, error) {
	from := time.Now()
	if !w.enabled() {
		return from, nil
	}
	const window, quietCPU, quietWindows = 250 * time.Millisecond, 0.05, 4
	procs := 1
	if w.pid <= 0 {
		procs = max(len(w.metrics), 1)
	}
	last, _, err := w.sample(ctx)
	if err != nil {
		return from, err
	}
	lastBusy, quiet := from, 0
	t := time.NewTicker(window)
	defer t.Stop()
	deadline := time.Now().Add(maxWait)
	for quiet < quietWindows {
		if time.Now().After(deadline) {
			return lastBusy, fmt.Errorf("the server did not go quiet within %s", maxWait)
		}
		select {
		case <-ctx.Done():
			return lastBusy, ctx.Err()
		case now := <-t.C:
			cpu, _, err := w.sample(ctx)
			if err != nil {
				return lastBusy, err
			}
			if cpu-last < quietCPU*float64(procs)*window.Seconds() {
				quiet++
			} else {
				quiet, lastBusy = 0, now
			}
			last = cpu
		}
	}
	return lastBusy, nil
}

// backlogSeries are the series whose sum is the work the deployment still
// has queued: events not yet handled by a durable consumer (pending or
// delivered and not acked) and events not yet acknowledged by JetStream.
var backlogSeries = []string{
	"clinicchat_nats_consumer_pending_messages",
	"clinicchat_nats_consumer_ack_pending_messages",
	"clinicchat_outbox_backlog_events",
}

// backlog is the sum of backlogSeries on the metrics URLs; found is false
// when they serve none of them (or there is no metrics URL).
func (w *serverWatch) backlog(ctx context.Context) (n float64, found bool, err error) {
	if len(w.metrics) == 0 {
		return 0, false, nil
	}
	err = w.scrape(ctx, func(series, value string) {
		name, _, _ := strings.Cut(series, "{")
		for _, b := range backlogSeries {
			if name == b {
				if v, perr := strconv.ParseFloat(value, 64); perr == nil {
					n, found = n+v, true
				}
			}
		}
	})
	return n, found, err
}

// waitCaughtUp polls the metrics URL until nothing is queued (backlog is 0)
// and returns when that scrape started: every projection, the audit log and
// every outbox had caught up by then. It fails without the series, or when
// the backlog is not empty within maxWait.
func (w *serverWatch) waitCaughtUp(ctx context.Context, maxWait time.Duration) (time.Time, error) {
	deadline := time.Now().Add(maxWait)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		at := time.Now()
		n, found, err := w.backlog(ctx)
		switch {
		case err != nil:
			return at, err
		case !found:
			return at, fmt.Errorf("%s serves no consumer or outbox backlog", strings.Join(w.metrics, ", "))
		case n == 0:
			return at, nil
		case at.After(deadline):
			return at, fmt.Errorf("%.0f events still queued after %s", n, maxWait)
		}
		select {
		case <-ctx.Done():
			return at, ctx.Err()
		case <-t.C:
		}
	}
}

// commits is the sum of clinicchat_sqldb_commits_total on the metrics URLs
// (every database of the deployment behind them), or -1.
func (w *serverWatch) commits(ctx context.Context) float64 {
	if len(w.metrics) == 0 {
		return -1
	}
	n, found := 0.0, false
	err := w.scrape(ctx, func(name, value string) {
		if name == "clinicchat_sqldb_commits_total" || strings.HasPrefix(name, "clinicchat_sqldb_commits_total{") {
			if v, err := strconv.ParseFloat(value, 64); err == nil {
				n, found = n+v, true
			}
		}
	})
	if err != nil || !found {
		return -1
	}
	return n
}

// sample is the server's total CPU seconds and current RSS bytes.
func (w *serverWatch) sample(ctx context.Context) (cpu, rss float64, err error) {
	if w.pid > 0 {
		return procSample(w.pid)
	}
	return w.metricsSample(ctx)
}

// procSample reads utime+stime and rss of pid from /proc.
func procSample(pid int) (cpu, rss float64, err error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) may hold spaces: fields count from after ')'.
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// After ')': state(3) ... utime(14) stime(15) ... rss(24).
	if len(f) < 22 {
		return 0, 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	pages, err3 := strconv.ParseFloat(f[21], 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return (ut + st) / clockTicks, pages * float64(os.Getpagesize()), nil
}

// procHWM is the kernel's peak RSS of pid (VmHWM), in bytes.
func procHWM(pid int) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// metricsSample reads process_cpu_seconds_total and
// process_resident_memory_bytes from each Prometheus text endpoint, and
// sums them: every one must serve both.
func (w *serverWatch) metricsSample(ctx context.Context) (cpu, rss float64, err error) {
	for _, u := range w.metrics {
		var c, r float64
		var haveCPU, haveRSS bool
		if err := scrapeURL(ctx, w.hc, u, func(name, value string) {
			switch name {
			case "process_cpu_seconds_total":
				var perr error
				c, perr = strconv.ParseFloat(value, 64)
				haveCPU = perr == nil
			case "process_resident_memory_bytes":
				var perr error
				r, perr = strconv.ParseFloat(value, 64)
				haveRSS = perr == nil
			}
		}); err != nil {
			return 0, 0, err
		}
		if !haveCPU || !haveRSS {
			return 0, 0, fmt.Errorf("%s has no process_cpu_seconds_total and process_resident_memory_bytes", u)
		}
		cpu, rss = cpu+c, rss+r
	}
	return cpu, rss, nil
}

// scrape calls f with each sample line's series (name and labels) and
// value, of every metrics URL in turn.
func (w *serverWatch) scrape(ctx context.Context, f func(series, value string)) error {
	for _, u := range w.metrics {
		if err := scrapeURL(ctx, w.hc, u, f); err != nil {
			return err
		}
	}
	return nil
}

// scrapeURL is scrape of one URL.
func scrapeURL(ctx context.Context, hc *http.Client, url string, f func(series, value string)) error {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.LastIndexByte(line, ' '); i > 0 && !strings.HasPrefix(line, "#") {
			f(line[:i], strings.TrimSpace(line[i+1:]))
		}
	}
	return sc.Err()
}
