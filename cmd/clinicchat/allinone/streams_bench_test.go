package allinone_test

// Event-stream load benchmarks (issue 9). The streams are opened by a child
// process (this test binary running TestStreamLoadClient), so the
// all-in-one's memory and CPU figures are the server's alone:
//
//	go test ./cmd/clinicchat/allinone -run '^$' -bench 'IdleStreams' -benchtime 1x
//	go test ./cmd/clinicchat/allinone -run '^$' -bench 'NeverReadingStreams' -benchtime 1x
//
// BenchmarkIdleStreams prints memory per stream, the CPU ratio and the
// send → recipient stream p50/p95/p99 at 8 senders with 5,000 streams open
// (more samples: CLINICCHAT_BENCH_SENDS=400 messages per sender).

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/clinicchat/clinicchat/gateway"
)

// raiseNoFile lifts this process's open-file limit to its hard limit:
// thousands of streams need thousands of sockets.
func raiseNoFile() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// rssBytes is this process's resident set size.
func rssBytes() int64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestStreamLoadClient is the benchmarks' load client, run as their child
// process: it opens CLINICCHAT_LOAD_USERS × CLINICCHAT_LOAD_PER_USER
// /v1/events streams as users "<prefix>-<i>" of CLINICCHAT_LOAD_PRACTICE
// with role CLINICCHAT_LOAD_ROLE, over raw sockets with small buffers;
// reads them (CLINICCHAT_LOAD_READ=1) or never reads past the headers;
// prints "open <n> refused <m>"; and holds them until stdin closes.
func TestStreamLoadClient(t *testing.T) {
	addr := os.Getenv("CLINICCHAT_LOAD_ADDR")
	if addr == "" {
		t.Skip("the event-stream benchmarks' load client; runs only as their child process")
	}
	raiseNoFile()
	users, _ := strconv.Atoi(os.Getenv("CLINICCHAT_LOAD_USERS"))
	perUser, _ := strconv.Atoi(os.Getenv("CLINICCHAT_LOAD_PER_USER"))
	practice, role, prefix := os.Getenv("CLINICCHAT_LOAD_PRACTICE"), os.Getenv("CLINICCHAT_LOAD_ROLE"), os.Getenv("CLINICCHAT_LOAD_PREFIX")
	read := os.Getenv("CLINICCHAT_LOAD_READ") == "1"
	hc := &http.Client{}
	var open, refused atomic.Int64
	var conns []net.Conn
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for u := range users {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			token, err := devToken(hc, addr, fmt.Sprintf("%s-%02d", prefix, u), role, practice)
			if err != nil {
				t.Error(err)
				return
			}
			for range perUser {
				c, ok, err := openRawStream(addr, token)
				if err != nil {
					t.Error(err)
					return
				}
				if !ok {
					refused.Add(1)
					continue
				}
				open.Add(1)
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				if read {
					go func() { _, _ = io.CopyBuffer(io.Discard, c, make([]byte, 512)) }()
				}
			}
		})
	}
	wg.Wait()
	fmt.Printf("open %d refused %d\n", open.Load(), refused.Load())
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		_ = c.Close()
	}
}

func devToken(hc *http.Client, addr, subject, role, practice string) (string, error) {
	body := fmt.Sprintf(`{"subject":%q,"role":%q,"practice":%q}`, subject, role, practice)
	resp, err := hc.Post("http://"+addr+"/v1/dev/tokens", "application/json", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	_, rest, ok := strings.Cut(string(raw), `"token":"`)
	if !ok {
		return "", fmt.Errorf("dev token: HTTP %d", resp.StatusCode)
	}
	tok, _, _ := strings.Cut(rest, `"`)
	return tok, nil
}

// openRawStream sends GET /v1/events and reads the status line and headers
// only; ok is false for a refusal (its body read and the socket closed).
func openRawStream(addr, token string) (net.Conn, bool, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, false, err
	}
	if _, err := fmt.Fprintf(c, "GET /v1/events HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nAccept: text/event-stream\r\n\r\n", addr, token); err != nil {
		return nil, false, err
	}
	// Byte by byte, so nothing after the headers is consumed.
	var head []byte
	b := make([]byte, 1)
	for !strings.HasSuffix(string(head), "\r\n\r\n") {
		if _, err := c.Read(b); err != nil {
			return nil, false, fmt.Errorf("read headers: %w", err)
		}
		head = append(head, b[0])
	}
	if !strings.HasPrefix(string(head), "HTTP/1.1 200") {
		_ = c.Close()
		return nil, false, nil
	}
	return c, true, nil
}

// loadClient is a running TestStreamLoadClient child.
type loadClient struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	open  int
}

func startLoadClient(b *testing.B, addr string, users, perUser int, practice, role, prefix string, read bool) *loadClient {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestStreamLoadClient$", "-test.count=1")
	r := "0"
	if read {
		r = "1"
	}
	cmd.Env = append(os.Environ(), "CLINICCHAT_LOAD_ADDR="+addr, "CLINICCHAT_LOAD_USERS="+strconv.Itoa(users),
		"CLINICCHAT_LOAD_PER_USER="+strconv.Itoa(perUser), "CLINICCHAT_LOAD_PRACTICE="+practice,
		"CLINICCHAT_LOAD_ROLE="+role, "CLINICCHAT_LOAD_PREFIX="+prefix, "CLINICCHAT_LOAD_READ="+r)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	lc := &loadClient{cmd: cmd, stdin: stdin}
	b.Cleanup(lc.stop)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var open, refused int
		if n, _ := fmt.Sscanf(sc.Text(), "open %d refused %d", &open, &refused); n == 2 {
			lc.open = open
			if refused > 0 {
				b.Fatalf("%d of %d streams refused", refused, users*perUser)
			}
			go func() { _, _ = io.Copy(io.Discard, stdout) }()
			return lc
		}
	}
	b.Fatal("the load client ended before opening its streams")
	return nil
}

func (lc *loadClient) stop() {
	if lc.stdin != nil {
		_ = lc.stdin.Close()
		lc.stdin = nil
		_ = lc.cmd.Wait()
	}
}

// roundResult is one round of sends at 8 senders.
type roundResult struct {
	label    string
	msgs     int
	cpuPer   time.Duration
	lat      latencies
	post     latencies // the POST alone (until the send is committed)
	stages   stageHists
	rssBytes int64
}

// sendRound: each of len(threads) senders sends perSender messages to its
// own thread, one at a time, each timed from just before the POST until it
// reaches the thread's patient's stream; CPU is counted until the pipeline
// is idle again.
func sendRound(b *testing.B, idle *idleWatcher, threads []*benchThread, patients []*benchStream, perSender int, text, label string) roundResult {
	b.Helper()
	idle.wait(b)
	env := threads[0].staff.env
	stages0 := scrapeStages(b, env)
	stopProfile := startRoundProfile(b, label)
	cpu0 := processCPU()
	lat := make([]latencies, len(threads))
	post := make([]latencies, len(threads))
	errs := make([]error, len(threads))
	var wg sync.WaitGroup
	for w, t := range threads {
		wg.Go(func() {
			for i := range perSender {
				t0 := time.Now()
				m, err := t.staff.send(t.conv, text, fmt.Sprintf("%s-%d-%d-%d", label, w, i, t0.UnixNano()))
				if err != nil {
					errs[w] = err
					return
				}
				post[w] = append(post[w], time.Since(t0))
				at, err := patients[w].wait("message.created", m.Name, "")
				if err != nil {
					errs[w] = err
					return
				}
				lat[w] = append(lat[w], at.Sub(t0))
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	idle.wait(b)
	cpu := processCPU() - cpu0
	stopProfile()
	var all, posts latencies
	for w, l := range lat {
		all = append(all, l...)
		posts = append(posts, post[w]...)
	}
	n := len(threads) * perSender
	return roundResult{label: label, msgs: n, cpuPer: cpu / time.Duration(n), lat: all, post: posts,
		stages: scrapeStages(b, env).since(stages0), rssBytes: rssBytes()}
}

// stageSeries are the histograms of a message's trip, in trip order:
// delivery's SQLite writer (sqldb/sqlite_metrics.go: a write's wait in the
// queue and its run to the durable commit, counting every write of
// delivery.db, the sends most of them; and each group commit's statements
// and COMMIT), the delivery outbox relay's (row written → sent, sent → acknowledged) and the
// gateway's (outbox/metrics.go, gateway/hub.go eventStages). The relay's
// count every delivery event (also the delivered receipts).
var stageSeries = []struct{ name, series string }{
	{"db write wait (queued → runs)", `clinicchat_sqldb_write_wait_seconds_bucket{db="delivery",`},
	{"db write run (runs → committed)", `clinicchat_sqldb_write_run_seconds_bucket{db="delivery",`},
	{"db batch statements", `clinicchat_sqldb_batch_statements_seconds_bucket{db="delivery",`},
	{"db batch COMMIT", `clinicchat_sqldb_batch_commit_seconds_bucket{db="delivery",`},
	{"relay wait (written → sent)", `clinicchat_outbox_relay_wait_seconds_bucket{service="delivery",`},
	{"relay hand-off (committed → sent)", `clinicchat_outbox_relay_handoff_seconds_bucket{service="delivery",`},
	{"relay ack (sent → acked)", `clinicchat_outbox_relay_ack_seconds_bucket{service="delivery",`},
	{"stored (written → stored)", `clinicchat_gateway_event_stage_seconds_bucket{stage="stored",`},
	{"consumed (→ fan-out)", `clinicchat_gateway_event_stage_seconds_bucket{stage="consumed",`},
	{"queued (→ stream took it)", `clinicchat_gateway_event_stage_seconds_bucket{stage="queued",`},
	{"written (→ on the socket)", `clinicchat_gateway_event_stage_seconds_bucket{stage="written",`},
}

// stageHists are cumulative bucket counts by upper bound, per stageSeries,
// and then two more entries of one "bucket" each: the delivery relay's
// published events and its waits for acknowledgements (counters).
type stageHists [][]stageBucket

// relayCounters are the counters after the histograms in a stageHists.
var relayCounters = []string{
	`clinicchat_outbox_published_events_total{service="delivery"} `,
	`clinicchat_outbox_publish_waits_total{service="delivery"} `,
}

type stageBucket struct {
	le    float64 // seconds; +Inf for the last
	count float64
}

// scrapeStages reads the stage histograms from /metrics.
func scrapeStages(b *testing.B, env *benchEnv) stageHists {
	b.Helper()
	resp, err := env.hc.Get("http://" + env.in.HTTPAddr + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	out := make(stageHists, len(stageSeries)+len(relayCounters))
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for i, name := range relayCounters {
			if v, ok := strings.CutPrefix(line, name); ok {
				c, _ := strconv.ParseFloat(v, 64)
				out[len(stageSeries)+i] = []stageBucket{{le: math.Inf(1), count: c}}
			}
		}
		for i, st := range stageSeries {
			rest, ok := strings.CutPrefix(line, st.series)
			if !ok {
				continue
			}
			le, count, ok := strings.Cut(strings.TrimPrefix(rest, `le="`), `"} `)
			if !ok {
				continue
			}
			bound, _ := strconv.ParseFloat(le, 64) // "+Inf" parses as +Inf
			c, _ := strconv.ParseFloat(count, 64)
			out[i] = append(out[i], stageBucket{le: bound, count: c})
		}
	}
	return out
}

// since is h minus an earlier scrape of the same histograms.
func (h stageHists) since(before stageHists) stageHists {
	out := make(stageHists, len(h))
	for i, bs := range h {
		for j, bk := range bs {
			if j < len(before[i]) {
				bk.count -= before[i][j].count
			}
			out[i] = append(out[i], bk)
		}
	}
	return out
}

// quantile interpolates the q-quantile within its bucket (Prometheus'
// histogram_quantile); 0 without observations.
func quantile(bs []stageBucket, q float64) (time.Duration, float64) {
	if len(bs) == 0 || bs[len(bs)-1].count == 0 {
		return 0, 0
	}
	total := bs[len(bs)-1].count
	rank := q * total
	lo, below := 0.0, 0.0
	for _, bk := range bs {
		if bk.count >= rank {
			if math.IsInf(bk.le, 1) {
				return time.Duration(lo * float64(time.Second)), total
			}
			in := bk.count - below
			f := 1.0
			if in > 0 {
				f = (rank - below) / in
			}
			return time.Duration((lo + (bk.le-lo)*f) * float64(time.Second)), total
		}
		lo, below = bk.le, bk.count
	}
	return 0, total
}

// startRoundProfile writes a CPU profile of one send round to
// $CLINICCHAT_BENCH_CPUPROFILE/<label>.pprof when that variable names a
// directory (go tool pprof -top -diff_base none.pprof open.pprof), and
// returns the function that ends it.
func startRoundProfile(b *testing.B, label string) func() {
	dir := os.Getenv("CLINICCHAT_BENCH_CPUPROFILE")
	if dir == "" {
		return func() {}
	}
	name := filepath.Join(dir, strings.NewReplacer(" ", "-", ",", "", "/", "-").Replace(label)+".pprof")
	f, err := os.Create(name)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		fmt.Printf("  CPU profile of %q: %s\n", label, name)
	}
}

func (r roundResult) print() {
	s := append(latencies(nil), r.lat...)
	sortLatencies(s)
	fmt.Printf("  %-28s %5d msgs  cpu %.2f ms/msg  send→stream p50 %.1f p95 %.1f p99 %.1f ms  rss %d MiB\n",
		r.label, r.msgs, ms(r.cpuPer), ms(s.pct(.5)), ms(s.pct(.95)), ms(s.pct(.99)), r.rssBytes>>20)
	p := append(latencies(nil), r.post...)
	sortLatencies(p)
	fmt.Printf("    %-30s p50 %5.2f p90 %5.2f p99 %5.2f ms  (%d)\n", "POST (until committed)", ms(p.pct(.5)), ms(p.pct(.9)), ms(p.pct(.99)), len(p))
	for i, st := range stageSeries {
		if i >= len(r.stages) {
			break
		}
		p50, n := quantile(r.stages[i], .5)
		p90, _ := quantile(r.stages[i], .9)
		p99, _ := quantile(r.stages[i], .99)
		fmt.Printf("    %-30s p50 %5.2f p90 %5.2f p99 %5.2f ms  (%.0f)\n", st.name, ms(p50), ms(p90), ms(p99), n)
	}
	if n := len(stageSeries); len(r.stages) == n+2 && len(r.stages[n]) == 1 && len(r.stages[n+1]) == 1 {
		published, waits := r.stages[n][0].count, r.stages[n+1][0].count
		fmt.Printf("    delivery relay: %.0f events in %.0f waits for acknowledgements (%.2f events per wait)\n",
			published, waits, published/max(waits, 1))
	}
}

func sortLatencies(l latencies) { slices.Sort(l) }

// patientStreams opens each thread's patient's stream.
func (e *benchEnv) patientStreams(b *testing.B, practice string, n int) []*benchStream {
	out := make([]*benchStream, n)
	for i := range out {
		out[i] = e.as(b, fmt.Sprintf("bench-patient-%02d", i), "patient", practice).stream(b)
	}
	return out
}

// BenchmarkIdleStreams: 5,000 idle /v1/events streams of 1,000 staff users
// of another practice (5 each). Reports the server's memory per stream, the
// CPU the idle streams cost by themselves, and a send's CPU and send →
// recipient stream latency (p50/p95/p99) at 8 senders, with none and with
// all of them open. Each measured round follows a warm-up round in the same
// state, so neither pays the heap's one-time growth (reported apart: the
// first round after the streams open).
//
// CLINICCHAT_BENCH_CPUPROFILE=dir writes a CPU profile of each round and a
// heap profile with the streams open into dir; CLINICCHAT_BENCH_SENDS sets
// the messages per sender of a measured round (default 100).
func BenchmarkIdleStreams(b *testing.B) {
	raiseNoFile()
	env := startBench(b)
	threads := env.threads(b, "bench", 8)
	patients := env.patientStreams(b, "bench", 8)
	idle := newIdleWatcher(b, env.nats)
	perSender := 100
	if n, err := strconv.Atoi(os.Getenv("CLINICCHAT_BENCH_SENDS")); err == nil && n > 0 {
		perSender = n
	}
	text := "Your appointment is confirmed"
	sendRound(b, idle, threads, patients, 10, text, "warm-up")
	runtime.GC()
	none := sendRound(b, idle, threads, patients, perSender, text, "no other streams")
	idleCPU0 := idleCPUShare(b, idle, 5*time.Second, "idle, no other streams")
	// A GC that also returns freed pages to the OS, so RSS is what is live.
	debug.FreeOSMemory()
	rss0 := rssBytes()
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	g0 := runtime.NumGoroutine()
	clients0 := metricValue(b, env, "clinicchat_gateway_sse_clients")
	t0 := time.Now()
	lc := startLoadClient(b, env.in.HTTPAddr, 1000, 5, "other", "dentist", "idle", true)
	openTime := time.Since(t0)
	debug.FreeOSMemory()
	rss1 := rssBytes()
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	g1 := runtime.NumGoroutine()
	writeHeapProfile(b, "streams-open-heap")
	// Longer than a keep-alive interval, so every stream's ping falls in it.
	idleCPU := idleCPUShare(b, idle, gateway.DefaultKeepAlive+time.Second, "idle, streams open")
	first := sendRound(b, idle, threads, patients, 10, text, "first round after opening")
	with := sendRound(b, idle, threads, patients, perSender, text, fmt.Sprintf("%d idle streams open", lc.open))
	rssAfter := rssBytes()
	decoded := metricValue(b, env, "clinicchat_gateway_hub_events_decoded_total")
	clients := metricValue(b, env, "clinicchat_gateway_sse_clients")
	// The same sends again once the streams are closed: the ratio compares
	// the round with them open against both rounds without, so that what
	// drifts over the run (the databases' size, checkpoints, a warmer
	// process) counts on both sides.
	nOpen := lc.open
	lc.stop()
	waitMetric(b, env, "clinicchat_gateway_sse_clients", clients0)
	after := sendRound(b, idle, threads, patients, perSender, text, "no other streams, after closing them")
	noneCPU := (none.cpuPer + after.cpuPer) / 2

	perStream := float64(rss1-rss0) / float64(lc.open)
	// In float64: with parked streams the stacks in use can shrink, and
	// an unsigned difference would wrap to ~2^64.
	heapStack := (float64(ms1.HeapInuse+ms1.StackInuse) - float64(ms0.HeapInuse+ms0.StackInuse)) / float64(lc.open)
	stack := (float64(ms1.StackInuse) - float64(ms0.StackInuse)) / float64(lc.open)
	fmt.Printf("BenchmarkIdleStreams: %d streams of 1,000 staff of another practice opened in %s (sse_clients %v; %.2f goroutines per stream)\n",
		lc.open, openTime.Round(time.Millisecond), clients, float64(g1-g0)/float64(lc.open))
	fmt.Printf("  process RSS %d → %d MiB after GC (Go heap+stacks in use %d → %d MiB): %.1f KiB per stream (Go heap+stacks %.1f KiB, of which stacks %.1f KiB); RSS after the sends %d MiB\n",
		rss0>>20, rss1>>20, (ms0.HeapInuse+ms0.StackInuse)>>20, (ms1.HeapInuse+ms1.StackInuse)>>20, perStream/1024, heapStack/1024, stack/1024, rssAfter>>20)
	fmt.Printf("  the whole process with the %d streams open: %.0f MB RSS after GC (issue 9's goal: under 250 MB)\n", lc.open, float64(rss1)/1e6)
	fmt.Printf("  idle CPU of the whole process: %.2f%% of one core with no other streams (5 s), %.2f%% with them open (%s: every stream's keep-alive)\n",
		idleCPU0*100, idleCPU*100, gateway.DefaultKeepAlive+time.Second)
	none.print()
	first.print()
	with.print()
	after.print()
	fmt.Printf("  CPU per send with the %d open / none open (the mean of the rounds before and after): %.2f× (%.2f× before, %.2f× after); hub events decoded in all: %v\n",
		nOpen, float64(with.cpuPer)/float64(noneCPU), float64(with.cpuPer)/float64(none.cpuPer), float64(with.cpuPer)/float64(after.cpuPer), decoded)
	b.ReportMetric(perStream/1024, "KiB/stream")
	b.ReportMetric(float64(with.cpuPer)/float64(noneCPU), "cpu-ratio")
	s := append(latencies(nil), with.lat...)
	sortLatencies(s)
	b.ReportMetric(ms(s.pct(.5)), "p50-ms-open")
	b.ReportMetric(ms(s.pct(.99)), "p99-ms-open")
	s = append(append(latencies(nil), none.lat...), after.lat...)
	sortLatencies(s)
	b.ReportMetric(ms(s.pct(.99)), "p99-ms-none")
}

// idleCPUShare is the share of one core the process uses over d once the
// pipeline is idle.
func idleCPUShare(b *testing.B, idle *idleWatcher, d time.Duration, label string) float64 {
	b.Helper()
	idle.wait(b)
	stopProfile := startRoundProfile(b, label)
	defer stopProfile()
	c0, t0 := processCPU(), time.Now()
	<-time.After(d) // a span of wall time to measure over, not a wait for an event
	return float64(processCPU()-c0) / float64(time.Since(t0))
}

// writeHeapProfile writes $CLINICCHAT_BENCH_CPUPROFILE/<name>.pprof, if set.
func writeHeapProfile(b *testing.B, name string) {
	if err := heapProfileTo(name); err != nil {
		b.Fatal(err)
	}
}

// heapProfileTo is writeHeapProfile for any goroutine.
func heapProfileTo(name string) error {
	dir := os.Getenv("CLINICCHAT_BENCH_CPUPROFILE")
	if dir == "" {
		return nil
	}
	f, err := os.Create(filepath.Join(dir, name+".pprof"))
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("heap").WriteTo(f, 0)
}

// BenchmarkNeverReadingStreams: 150 streams (15 patients × 10) that never
// read past the headers while 300 messages of 10,000 characters go to
// their threads; meanwhile /readyz is polled and another practice's
// patient receives 8 senders' messages as usual.
func BenchmarkNeverReadingStreams(b *testing.B) {
	raiseNoFile()
	env := startBench(b)
	stuck := env.threads(b, "stuck", 15)
	threads := env.threads(b, "bench", 8)
	patients := env.patientStreams(b, "bench", 8)
	idle := newIdleWatcher(b, env.nats)
	text := "Your appointment is confirmed"
	sendRound(b, idle, threads, patients, 10, text, "warm-up")
	runtime.GC()
	before := sendRound(b, idle, threads, patients, 30, text, "before")
	lc := startLoadClient(b, env.in.HTTPAddr, 15, 10, "stuck", "patient", "bench-patient", false)
	rss0 := rssBytes()

	// /readyz every 20 ms for the whole run.
	stop := make(chan struct{})
	var polls, notReady atomic.Int64
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			resp, err := env.hc.Get("http://" + env.in.HTTPAddr + "/readyz")
			polls.Add(1)
			if err != nil || resp.StatusCode != http.StatusOK {
				notReady.Add(1)
			}
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}
		}
	}()
	big := strings.Repeat("x", 10000)
	var wg sync.WaitGroup
	var sendErrs atomic.Int64
	var next atomic.Int64
	t0 := time.Now()
	for w := range 4 {
		wg.Go(func() {
			for i := next.Add(1); i <= 300; i = next.Add(1) {
				t := stuck[int(i)%len(stuck)]
				if _, err := t.staff.send(t.conv, big, fmt.Sprintf("big-%d-%d", w, i)); err != nil {
					sendErrs.Add(1)
				}
			}
		})
	}
	during := sendRound(b, idle, threads, patients, 30, text, "during, other practice")
	wg.Wait()
	bigTime := time.Since(t0)
	idle.wait(b)
	close(stop)
	<-pollDone
	runtime.GC()
	rss1 := rssBytes()
	dropped := metricValue(b, env, "clinicchat_gateway_sse_dropped_events_total")
	queued := metricValue(b, env, "clinicchat_gateway_hub_queue_depth")
	fmt.Printf("BenchmarkNeverReadingStreams: %d never-reading streams; 300 × 10,000-character messages to their threads in %s (%d send errors)\n",
		lc.open, bigTime.Round(time.Millisecond), sendErrs.Load())
	fmt.Printf("  /readyz: %d polls, %d not 200; server RSS %d → %d MiB; hub queue depth %v, events dropped for slow clients %v\n",
		polls.Load(), notReady.Load(), rss0>>20, rss1>>20, queued, dropped)
	before.print()
	during.print()
	b.ReportMetric(float64(notReady.Load()), "readyz-failures")
}

// metricValue reads one unlabelled metric from /metrics.
// waitMetric waits until the gateway's gauge name reads want.
func waitMetric(b *testing.B, env *benchEnv, name string, want float64) {
	b.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(time.Minute)
	for metricValue(b, env, name) != want {
		select {
		case <-tick.C:
		case <-deadline:
			b.Fatalf("%s is %v after a minute, want %v", name, metricValue(b, env, name), want)
		}
	}
}

func metricValue(b *testing.B, env *benchEnv, name string) float64 {
	b.Helper()
	resp, err := env.hc.Get("http://" + env.in.HTTPAddr + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}
