package allinone_test

// Benchmarks of the whole product through the gateway, on a real all-in-one
// (loopback HTTP, embedded NATS, SQLite files with synchronous=FULL in
// b.TempDir()). They only run with -bench; see BENCHMARKS.md:
//
//	go test ./cmd/clinicchat/allinone -run '^$' -bench 'Stream$' -benchtime 3s
//	go test ./cmd/clinicchat/allinone -run '^$' -bench 'SendThroughput' -benchtime 2000x
//	go test ./cmd/clinicchat/allinone -run '^$' -bench 'SendLongThread' -benchtime 500x
//
// Latencies are measured from just before the HTTP request to the moment the
// SSE line is read by the client; they are printed, never asserted.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/clinicchat/clinicchat/services/platform/ratelimit"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// benchWait bounds every wait of a benchmark on an event or on quiescence.
const benchWait = 60 * time.Second

// benchEnv is a running all-in-one with a NATS address the benchmark can
// watch, and an HTTP client that keeps enough connections alive for every
// concurrent sender (http.DefaultClient keeps only 2 idle per host, which
// would measure TCP set-up instead of the product).
type benchEnv struct {
	in   *allinone.Instance
	nats string
	hc   *http.Client
}

func startBench(b *testing.B, opts ...func(*allinone.Config)) *benchEnv {
	b.Helper()
	natsAddr := freeAddr(b)
	cfg := allinone.Config{HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", DataDir: b.TempDir(), Dev: true, NATSListen: natsAddr,
		ArchiveAfter: 8760 * time.Hour, ArchiveSweepInterval: time.Hour, StepUpWindow: 5 * time.Minute, DrainTimeout: 5 * time.Second,
		Limits: ratelimit.Config{SendsPerSecond: 1e9, SendBurst: 1e9}} // load, not people
	if v := os.Getenv("CLINICCHAT_BENCH_MEMORY_LIMIT"); v != "" { // --memory-limit (the default is off here)
		n, err := allinone.ParseBytes(v)
		if err != nil {
			b.Fatal(err)
		}
		cfg.MemoryLimit = n
		prev := debug.SetMemoryLimit(-1)
		b.Cleanup(func() { debug.SetMemoryLimit(prev) })
	}
	for _, o := range opts {
		o(&cfg)
	}
	in, err := allinone.Start(context.Background(), cfg, testkit.Logger(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = in.Stop() })
	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute}
	b.Cleanup(tr.CloseIdleConnections)
	return &benchEnv{in: in, nats: "nats://" + natsAddr, hc: &http.Client{Transport: tr}}
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(b *testing.B) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	return addr
}

// bclient is the harness's client for benchmarks: it returns errors instead
// of failing, so worker goroutines can use it.
type bclient struct {
	env   *benchEnv
	token string
}

func (e *benchEnv) as(b *testing.B, subject, role, practice string) *bclient {
	b.Helper()
	c := &bclient{env: e}
	var out struct{ Token string }
	if err := c.call("POST", "/v1/dev/tokens", map[string]any{"subject": subject, "role": role, "practice": practice}, &out); err != nil {
		b.Fatal(err)
	}
	c.token = out.Token
	return c
}

// call sends a JSON request and decodes a 200 answer into out (if not nil).
func (c *bclient) call(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, "http://"+c.env.in.HTTPAddr+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.env.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

func (c *bclient) startConversation(b *testing.B, patient string) string {
	b.Helper()
	var conv conversation
	if err := c.call("POST", "/v1/conversations", map[string]any{"patient": "patients/" + patient}, &conv); err != nil {
		b.Fatal(err)
	}
	return conv.Name
}

func (c *bclient) send(conv, text, requestID string) (message, error) {
	var m message
	err := c.call("POST", "/v1/"+conv+"/messages", map[string]any{"text": text, "requestId": requestID}, &m)
	return m, err
}

// stampedEvent is an SSE event with the instant its last line was read.
type stampedEvent struct {
	typ string
	at  time.Time
	msg message
}

// benchStream is a live /v1/events stream whose reader stamps each event on
// arrival, so the benchmark goroutine's scheduling does not count.
type benchStream struct {
	events chan stampedEvent
	done   chan struct{}
}

// stream opens /v1/events; it returns once the subscription is live.
func (c *bclient) stream(b *testing.B) *benchStream {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+c.env.in.HTTPAddr+"/v1/events", nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.env.hc.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("GET /v1/events: HTTP %d", resp.StatusCode)
	}
	s := &benchStream{events: make(chan stampedEvent, 4096), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer resp.Body.Close()
		defer close(s.events)
		sc := bufio.NewScanner(resp.Body)
		// Grows to 1 MiB only for a line that needs it: the benchmarks
		// count this process's memory, and the server is what they measure.
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var typ string
		var data strings.Builder
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if typ != "" {
					ev := stampedEvent{typ: typ, at: time.Now()}
					var d struct {
						Message *message `json:"message"`
					}
					if json.Unmarshal([]byte(data.String()), &d) == nil && d.Message != nil {
						ev.msg = *d.Message
					}
					s.events <- ev
				}
				typ = ""
				data.Reset()
			case strings.HasPrefix(line, "event:"):
				typ = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
			case strings.HasPrefix(line, "data:"):
				data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
			}
		}
	}()
	b.Cleanup(func() { cancel(); <-s.done })
	return s
}

// wait returns when the event typ about message name (in status, if set)
// arrives; other events are skipped.
func (s *benchStream) wait(typ, name, status string) (time.Time, error) {
	timeout := time.NewTimer(benchWait)
	defer timeout.Stop()
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				return time.Time{}, errors.New("event stream ended")
			}
			if ev.typ == typ && ev.msg.Name == name && (status == "" || ev.msg.Status == status) {
				return ev.at, nil
			}
		case <-timeout.C:
			return time.Time{}, fmt.Errorf("no %s %s %s within %s", typ, name, status, benchWait)
		}
	}
}

// latencies is a sample of durations.
type latencies []time.Duration

// pct is the nearest-rank q-quantile (0 < q <= 1) of a sorted sample.
func (l latencies) pct(q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	i := int(q*float64(len(l))+0.5) - 1
	return l[min(max(i, 0), len(l)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// reportLatency reports p50/p95/p99 of each series as metrics (prefix-p50-ms…)
// and prints them as a table.
func reportLatency(b *testing.B, title string, all ...series) {
	var t strings.Builder
	fmt.Fprintf(&t, "%s (%d samples)\n", title, len(all[0].l))
	fmt.Fprintf(&t, "  %-24s %8s %8s %8s %8s\n", "ms", "p50", "p95", "p99", "max")
	for _, s := range all {
		slices.Sort(s.l)
		p50, p95, p99 := s.l.pct(0.50), s.l.pct(0.95), s.l.pct(0.99)
		b.ReportMetric(ms(p50), s.name+"-p50-ms")
		b.ReportMetric(ms(p95), s.name+"-p95-ms")
		b.ReportMetric(ms(p99), s.name+"-p99-ms")
		fmt.Fprintf(&t, "  %-24s %8.2f %8.2f %8.2f %8.2f\n", s.name, ms(p50), ms(p95), ms(p99), ms(s.l.pct(1)))
	}
	b.Log("\n" + t.String())
}

// series is one named latency sample.
type series struct {
	name string
	l    latencies
}

// BenchmarkSendToRecipientStream: a staff member sends through HTTP; the time
// from just before the POST to message.created arriving on the patient's
// /v1/events stream ("e2e"), and the POST's own round trip ("post").
func BenchmarkSendToRecipientStream(b *testing.B) {
	env := startBench(b)
	staff := env.as(b, "dr-lee", "dentist", allinone.DemoPractice)
	alice := env.as(b, "alice", "patient", allinone.DemoPractice)
	conv := staff.startConversation(b, "alice")
	aliceEvents := alice.stream(b)

	i := 0
	one := func() (e2e, post time.Duration) {
		i++
		start := time.Now()
		m, err := staff.send(conv, "Your crown is ready", fmt.Sprintf("bench-%d", i))
		if err != nil {
			b.Fatal(err)
		}
		posted := time.Now()
		at, err := aliceEvents.wait("message.created", m.Name, "")
		if err != nil {
			b.Fatal(err)
		}
		return at.Sub(start), posted.Sub(start)
	}
	for range 20 { // warm up connections, caches and consumers
		one()
	}
	var e2e, post latencies
	for b.Loop() {
		d, p := one()
		e2e, post = append(e2e, d), append(post, p)
	}
	reportLatency(b, "send → recipient stream (message.created)", series{"e2e", e2e}, series{"post", post})
}

// BenchmarkMarkReadToSenderStream: the patient opens the thread (POST
// :markRead up to the newest message); the time from just before that POST to
// message.updated READ for the message on the staff sender's stream. Each
// iteration first sends a message and waits until it is DELIVERED (so ns/op
// covers a send and a read; the percentiles cover the read only). When the
// conversation projection has not applied the message yet, markRead waits
// for it: that wait is part of what is measured, as a client would see it.
func BenchmarkMarkReadToSenderStream(b *testing.B) {
	env := startBench(b)
	staff := env.as(b, "dr-lee", "dentist", allinone.DemoPractice)
	alice := env.as(b, "alice", "patient", allinone.DemoPractice)
	conv := staff.startConversation(b, "alice")
	staffEvents := staff.stream(b)
	aliceEvents := alice.stream(b)

	i := 0
	one := func() (e2e, post time.Duration) {
		i++
		m, err := staff.send(conv, "Please confirm Tuesday 10:00", fmt.Sprintf("bench-%d", i))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := aliceEvents.wait("message.created", m.Name, ""); err != nil {
			b.Fatal(err)
		}
		if _, err := staffEvents.wait("message.updated", m.Name, "DELIVERED"); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := alice.call("POST", "/v1/"+conv+":markRead", map[string]any{"upTo": m.Name}, nil); err != nil {
			b.Fatal(err)
		}
		posted := time.Now()
		at, err := staffEvents.wait("message.updated", m.Name, "READ")
		if err != nil {
			b.Fatal(err)
		}
		return at.Sub(start), posted.Sub(start)
	}
	for range 20 {
		one()
	}
	var e2e, post latencies
	for b.Loop() {
		d, p := one()
		e2e, post = append(e2e, d), append(post, p)
	}
	reportLatency(b, "markRead → sender stream (message.updated READ)", series{"e2e", e2e}, series{"post", post})
}

// throughputResult is one BenchmarkSendThroughput run.
type throughputResult struct {
	name   string
	msgs   int
	rate   float64 // messages per second
	p50    time.Duration
	p99    time.Duration
	cpu    time.Duration // per message, until the system is idle again
	cpuWin time.Duration // per message, while the POSTs ran
	busy   time.Duration // wall time until idle again
	thread int           // messages in the longest thread at the end
}

// benchThreads is how many threads BenchmarkSendThroughput spreads its
// messages over: a clinic has many, and a thread's length changes the cost of
// a send (see BenchmarkSendLongThread).
const benchThreads = 64

// BenchmarkSendThroughput: 1, 8 and 32 concurrent staff senders; sender w of
// n sends round-robin to threads w, w+n, w+2n… of 64 (patients created in a
// fresh practice by the practice system and opted in by themselves), so no
// two senders share a thread. It reports accepted msgs/s (over the time the
// POSTs took), p50/p99 of the POST, and the process's user+sys CPU per
// message counted until every JetStream consumer (conversation projection,
// notifications, audit, receipts) has caught up and no stream grows, so the
// work each message causes downstream is included. The process is the whole
// product plus this load generator (HTTP client, JSON: 1-2% of the CPU in a
// profile), so CPU per message is a slight overestimate. No event stream is
// open.
func BenchmarkSendThroughput(b *testing.B) {
	env := startBench(b)
	threads := env.threads(b, "bench", benchThreads)
	idle := newIdleWatcher(b, env.nats)
	var results []throughputResult
	for _, n := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("senders=%d", n), func(b *testing.B) {
			r := runSenders(b, idle, threads, n)
			// The last run of a sub-benchmark (the largest b.N) is the one
			// go test reports: keep only that one.
			if len(results) > 0 && results[len(results)-1].name == r.name {
				results = results[:len(results)-1]
			}
			results = append(results, r)
		})
	}
	printThroughput("BenchmarkSendThroughput", results)
}

// BenchmarkSendLongThread: one sender, one thread, first when the thread is
// new and then once it holds 3,000 messages (filled, untimed, by 8 concurrent
// senders): the same figures as BenchmarkSendThroughput. A send's cost should
// not depend on the thread's length.
func BenchmarkSendLongThread(b *testing.B) {
	env := startBench(b)
	idle := newIdleWatcher(b, env.nats)
	var results []throughputResult
	for _, fill := range []int{0, 10000} {
		threads := env.threads(b, fmt.Sprintf("long-%d", fill), 1)
		if fill > 0 {
			fillers := make([]benchThread, 8)
			for i := range fillers {
				fillers[i] = benchThread{staff: env.as(b, fmt.Sprintf("filler-%02d", i), "dentist", threads[0].practice),
					conv: threads[0].conv, practice: threads[0].practice}
			}
			var next atomic.Int64
			var wg sync.WaitGroup
			errs := make([]error, len(fillers))
			for w, f := range fillers {
				wg.Go(func() {
					for i := next.Add(1); i <= int64(fill); i = next.Add(1) {
						if _, err := f.staff.send(f.conv, "Your appointment is confirmed", fmt.Sprintf("fill-%d", i)); err != nil {
							errs[w] = err
							return
						}
					}
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(fmt.Sprintf("thread=%d", fill), func(b *testing.B) {
			r := runSenders(b, idle, threads, 1)
			r.thread += fill
			if len(results) > 0 && results[len(results)-1].name == r.name {
				results = results[:len(results)-1]
			}
			results = append(results, r)
		})
	}
	printThroughput("BenchmarkSendLongThread", results)
}

// benchThread is a thread and the staff member who sends to it.
type benchThread struct {
	staff    *bclient
	conv     string
	practice string
	sent     int
}

// threads creates n patients in practice (by its practice system), opts
// each in (as the patient) and starts a thread with each (as a staff member
// of its own).
func (e *benchEnv) threads(b *testing.B, practice string, n int) []*benchThread {
	b.Helper()
	pms := e.as(b, "pms", "system", practice)
	out := make([]*benchThread, n)
	for i := range out {
		id := fmt.Sprintf("bench-patient-%02d", i)
		if err := pms.call("POST", "/v1/patients", map[string]any{"patient": map[string]any{
			"name": "patients/" + id, "externalId": fmt.Sprintf("B%04d", i), "displayName": fmt.Sprintf("Bench Patient %02d", i),
			"dateOfBirth": "1990-01-01", "hasPortalAccount": true}}, nil); err != nil {
			b.Fatal(err)
		}
		patient := e.as(b, id, "patient", practice)
		if err := patient.call("PATCH", "/v1/patients/"+id+"/communicationPreferences", map[string]any{"chatOptIn": true}, nil); err != nil {
			b.Fatal(err)
		}
		staff := e.as(b, fmt.Sprintf("staff-%02d", i), "dentist", practice)
		out[i] = &benchThread{staff: staff, conv: staff.startConversation(b, id), practice: practice}
	}
	return out
}

// runSenders sends b.N messages with n concurrent senders over threads and
// measures them (see BenchmarkSendThroughput).
func runSenders(b *testing.B, idle *idleWatcher, threads []*benchThread, n int) throughputResult {
	idle.wait(b)
	perWorker := make([]latencies, n)
	errs := make([]error, n)
	var next atomic.Int64
	cpu0 := processCPU()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range n {
		wg.Go(func() {
			for k := w; ; k += n {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				t := threads[k%len(threads)]
				t0 := time.Now()
				if _, err := t.staff.send(t.conv, "Your appointment is confirmed", fmt.Sprintf("%s-%d-%d", b.Name(), b.N, i)); err != nil {
					errs[w] = err
					return
				}
				perWorker[w] = append(perWorker[w], time.Since(t0))
				t.sent++
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpuWin := processCPU() - cpu0
	b.StopTimer()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	idle.wait(b)
	busy := time.Since(start)
	cpu := processCPU() - cpu0

	all := slices.Concat(perWorker...)
	slices.Sort(all)
	r := throughputResult{name: b.Name(), msgs: b.N, rate: float64(b.N) / elapsed.Seconds(),
		p50: all.pct(0.5), p99: all.pct(0.99), cpu: cpu / time.Duration(b.N), cpuWin: cpuWin / time.Duration(b.N), busy: busy}
	for _, t := range threads {
		r.thread = max(r.thread, t.sent)
	}
	b.ReportMetric(r.rate, "msgs/s")
	b.ReportMetric(ms(r.p50), "post-p50-ms")
	b.ReportMetric(ms(r.p99), "post-p99-ms")
	b.ReportMetric(ms(r.cpu), "cpu-ms/msg")
	b.ReportMetric(ms(r.cpuWin), "cpu-window-ms/msg")
	return r
}

// printThroughput prints a table of results (a parent benchmark's log is
// shown only with -v, so it goes to stdout).
func printThroughput(title string, results []throughputResult) {
	var t strings.Builder
	fmt.Fprintf(&t, "%s (CPU: the whole process; until idle, and while the POSTs ran)\n  %-12s %6s %8s %8s %8s %10s %10s %10s %7s\n", title,
		"", "msgs", "msgs/s", "p50 ms", "p99 ms", "CPU ms/msg", "(window)", "until idle", "thread")
	for _, r := range results {
		fmt.Fprintf(&t, "  %-12s %6d %8.0f %8.2f %8.2f %10.3f %10.3f %9.2fs %7d\n", strings.TrimPrefix(r.name, title+"/"), r.msgs, r.rate,
			ms(r.p50), ms(r.p99), ms(r.cpu), ms(r.cpuWin), r.busy.Seconds(), r.thread)
	}
	fmt.Print(t.String())
}

// processCPU is the user+system CPU time this process has used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// idleWatcher tells when the pipeline behind the sends is idle: every
// JetStream consumer has nothing pending or unacknowledged, and no stream
// grew over a few consecutive looks (so no outbox row is still on its way).
type idleWatcher struct {
	js jetstream.JetStream
}

func newIdleWatcher(b *testing.B, url string) *idleWatcher {
	b.Helper()
	return newIdleWatcherOpts(b, url)
}

// newInProcessIdleWatcher watches env's embedded NATS over an in-process
// connection (an all-in-one that listens on no NATS port, as by default).
func newInProcessIdleWatcher(b *testing.B, env *benchEnv) *idleWatcher {
	b.Helper()
	return newIdleWatcherOpts(b, "", nats.InProcessServer(allinone.EmbeddedNATS(env.in)))
}

func newIdleWatcherOpts(b *testing.B, url string, opts ...nats.Option) *idleWatcher {
	b.Helper()
	nc, err := nats.Connect(url, append(opts, nats.Name("benchmark"))...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	return &idleWatcher{js: js}
}

func (w *idleWatcher) wait(b *testing.B) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), benchWait)
	defer cancel()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	var last map[string]uint64
	stable := 0
	for stable < 3 {
		select {
		case <-ctx.Done():
			b.Fatalf("the pipeline did not become idle within %s", benchWait)
		case <-tick.C:
		}
		seqs, busy, err := w.look(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if busy || !maps.Equal(seqs, last) {
			stable = 0
		} else {
			stable++
		}
		last = seqs
	}
}

// streamSize is a stream's content: its events and their stored bytes.
type streamSize struct {
	name        string
	msgs, bytes uint64
}

// streamSizes returns every stream's content, in name order.
func (w *idleWatcher) streamSizes(b *testing.B) []streamSize {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), benchWait)
	defer cancel()
	var out []streamSize
	names := w.js.StreamNames(ctx)
	for name := range names.Name() {
		s, err := w.js.Stream(ctx, name)
		if err != nil {
			b.Fatal(err)
		}
		st := s.CachedInfo().State
		out = append(out, streamSize{name: name, msgs: st.Msgs, bytes: st.Bytes})
		if os.Getenv("CLINICCHAT_BENCH_SHOW_EVENTS") != "" { // what a stored event holds
			for seq := st.LastSeq; seq > 0 && seq+6 > st.LastSeq; seq-- {
				m, err := s.GetMsg(ctx, seq)
				if err != nil {
					b.Fatal(err)
				}
				fmt.Printf("    %s #%d: subject %q (%d B), header %v, data %d B\n", name, seq, m.Subject, len(m.Subject), m.Header, len(m.Data))
			}
		}
	}
	if err := names.Err(); err != nil {
		b.Fatal(err)
	}
	slices.SortFunc(out, func(a, b streamSize) int { return strings.Compare(a.name, b.name) })
	return out
}

// look returns each stream's last sequence and whether any consumer has work.
func (w *idleWatcher) look(ctx context.Context) (map[string]uint64, bool, error) {
	seqs := map[string]uint64{}
	busy := false
	names := w.js.StreamNames(ctx)
	for name := range names.Name() {
		s, err := w.js.Stream(ctx, name)
		if err != nil {
			return nil, false, err
		}
		seqs[name] = s.CachedInfo().State.LastSeq
		cl := s.ListConsumers(ctx)
		for ci := range cl.Info() {
			if ci.NumPending > 0 || ci.NumAckPending > 0 {
				busy = true
			}
		}
		if err := cl.Err(); err != nil {
			return nil, false, err
		}
	}
	return seqs, busy, names.Err()
}
