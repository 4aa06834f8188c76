package allinone_test

// BenchmarkSteadyRateMemory (issue 10: "under 150 MB RSS at 1,000 sends/s
// however long the run"): 8 senders send at a steady total rate to 8
// patients whose /v1/events streams are open (read by a child process, so
// delivered receipts flow as in production), and the process's memory is
// printed at every quarter of the run and after the pipeline is idle:
//
//	CLINICCHAT_BENCH_RATE=1000 CLINICCHAT_BENCH_MESSAGES=60000 \
//	  go test ./cmd/clinicchat/allinone -run '^$' -bench SteadyRateMemory -benchtime 1x
//
// (defaults: 300 sends/s, 18,000 messages; CLINICCHAT_BENCH_CPUPROFILE=dir
// writes a heap profile at each quarter of the sends and once the pipeline
// is idle; CLINICCHAT_BENCH_MEMORY_CLASSES=1 prints the runtime's memory
// classes at each quarter). The all-in-one runs as deployed, its NATS
// listening on no port (CLINICCHAT_BENCH_NATS_LISTEN=1: on a port, as
// before mem16, which adds the notification requests). When the machine cannot keep
// the rate, the senders run flat out and the achieved rate is printed.
// The all-in-one runs with --memory-limit's default (DefaultMemoryLimit), or
// CLINICCHAT_BENCH_MEMORY_LIMIT ("0": none); every 5 s a
// line gives RSS, the heap in use and mapped, the live heap and the limit,
// and at the end the growth per message of the live heap and of RSS.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// memSample is the process's memory at one moment.
type memSample struct {
	label               string
	msgs                int64
	rss, anon, file     int64 // /proc/self/smaps_rollup
	goMapped, goResid   int64 // Go runtime: mapped, and mapped less released to the OS
	heapLive, heapGoal  int64
	heapInuse, heapSys  int64 // as runtime.MemStats' HeapInuse and HeapSys
	limit               int64 // the runtime's memory limit (math.MaxInt64: none)
	stacks              int64
	goroutines, gcCount int64
}

func readMemSample(label string, msgs int64) memSample {
	s := memSample{label: label, msgs: msgs}
	if raw, err := os.ReadFile("/proc/self/smaps_rollup"); err == nil {
		for _, line := range strings.Split(string(raw), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			switch f[0] {
			case "Rss:":
				s.rss = kb << 10
			case "Anonymous:":
				s.anon = kb << 10
			case "Pss_File:":
				s.file = kb << 10
			}
		}
	}
	ms := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"},
		{Name: "/gc/heap/live:bytes"}, {Name: "/gc/heap/goal:bytes"}, {Name: "/memory/classes/heap/stacks:bytes"},
		{Name: "/sched/goroutines:goroutines"}, {Name: "/gc/cycles/total:gc-cycles"},
		{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"}, {Name: "/gc/gomemlimit:bytes"}}
	metrics.Read(ms)
	v := func(i int) int64 { return int64(ms[i].Value.Uint64()) }
	s.goMapped, s.goResid = v(0), v(0)-v(1)
	s.heapLive, s.heapGoal, s.stacks, s.goroutines, s.gcCount = v(2), v(3), v(4), v(5), v(6)
	s.heapInuse = v(7) + v(8)
	s.heapSys = s.heapInuse + v(9) + v(1)
	s.limit = v(10)
	return s
}

func (s memSample) print() {
	fmt.Printf("  %-26s %7d msgs  RSS %4d MiB (anon %4d, file %3d)  Go resident %4d MiB (heap live %4d, goal %4d, stacks %2d)  non-Go anon %3d MiB  goroutines %5d  GCs %d\n",
		s.label, s.msgs, s.rss>>20, s.anon>>20, s.file>>20, s.goResid>>20, s.heapLive>>20, s.heapGoal>>20, s.stacks>>20,
		(s.anon-s.goResid)>>20, s.goroutines, s.gcCount)
}

// printSeries prints s as one line of the run's time series.
func (s memSample) printSeries(at time.Duration) {
	fmt.Printf("  t %4.0fs %7d msgs  RSS %4d MiB  heap in use %4d MiB  heap mapped %4d MiB  live %4d MiB  goal %4d MiB  limit %s  non-Go anon %3d MiB\n",
		at.Seconds(), s.msgs, s.rss>>20, s.heapInuse>>20, s.heapSys>>20, s.heapLive>>20, s.heapGoal>>20, mib(s.limit),
		(s.anon-s.goResid)>>20)
}

// printMemoryClasses prints the runtime's /memory/classes/ metrics.
func printMemoryClasses() {
	var ms []metrics.Sample
	for _, d := range metrics.All() {
		if strings.HasPrefix(d.Name, "/memory/classes/") {
			ms = append(ms, metrics.Sample{Name: d.Name})
		}
	}
	metrics.Read(ms)
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, " %s=%.1f", strings.TrimSuffix(strings.TrimPrefix(m.Name, "/memory/classes/"), ":bytes"), float64(m.Value.Uint64())/(1<<20))
	}
	fmt.Println("  memory classes (MiB):" + b.String())
}

// sqliteConns sums SQLite's connections by database and pool.
type sqliteConns map[[2]string]*sqldb.ConnMemory

// printSQLiteMemory prints SQLite's heap by database and connection pool
// (sqlite3_db_status: page cache, schemas, statements, lookaside) and, with
// before and the messages sent since, the page cache's hits and misses per
// message.
func printSQLiteMemory(label string, before sqliteConns, msgs int64) sqliteConns {
	fmt.Println("  SQLite's memory, " + label + ":")
	sums := sqliteConns{}
	n := map[[2]string]int{}
	for _, m := range sqldb.SQLiteMemory(context.Background()) {
		k := [2]string{m.DB, m.Pool}
		if sums[k] == nil {
			sums[k] = &sqldb.ConnMemory{}
		}
		s := sums[k]
		s.Cache += m.Cache
		s.Schema += m.Schema
		s.Stmts += m.Stmts
		s.Lookaside += m.Lookaside
		s.Hits += m.Hits
		s.Misses += m.Misses
		s.Spills += m.Spills
		n[k]++
	}
	keys := slices.SortedFunc(maps.Keys(sums), func(a, b [2]string) int { return strings.Compare(a[0]+a[1], b[0]+b[1]) })
	var total int
	for _, k := range keys {
		s := sums[k]
		total += s.Total()
		var rates string
		if b := before[k]; b != nil && msgs > 0 {
			rates = fmt.Sprintf("  per message: %.2f hits, %.3f misses, %.3f spills", float64(s.Hits-b.Hits)/float64(msgs),
				float64(s.Misses-b.Misses)/float64(msgs), float64(s.Spills-b.Spills)/float64(msgs))
		}
		fmt.Printf("  sqlite %-13s %-12s x%d  cache %6.0f KiB  schema %5.0f  stmts %5.0f  lookaside %5.0f  total %6.0f KiB%s\n",
			k[0], k[1], n[k], float64(s.Cache)/1024, float64(s.Schema)/1024, float64(s.Stmts)/1024, float64(s.Lookaside)/1024, float64(s.Total())/1024, rates)
	}
	fmt.Printf("  sqlite connections together %.1f MiB\n", float64(total)/(1<<20))
	return sums
}

// gcCPU is the collector's CPU time so far (runtime/metrics' estimate).
func gcCPU() time.Duration {
	s := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(s)
	return time.Duration(s[0].Value.Float64() * float64(time.Second))
}

func mib(n int64) string {
	if n <= 0 || n == math.MaxInt64 {
		return "none"
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

func BenchmarkSteadyRateMemory(b *testing.B) {
	raiseNoFile()
	rate := envInt("CLINICCHAT_BENCH_RATE", 300)
	total := envInt("CLINICCHAT_BENCH_MESSAGES", 18000)
	limit := allinone.DefaultMemoryLimit
	if v := os.Getenv("CLINICCHAT_BENCH_MEMORY_LIMIT"); v != "" {
		n, err := allinone.ParseBytes(v)
		if err != nil {
			b.Fatal(err)
		}
		limit = n
	}
	prevLimit := debug.SetMemoryLimit(-1)
	b.Cleanup(func() { debug.SetMemoryLimit(prevLimit) })
	// As deployed: the all-in-one's NATS listens on no port (so it publishes
	// no notification requests, which only a networked notifier could read),
	// unless CLINICCHAT_BENCH_NATS_LISTEN is set.
	listen := os.Getenv("CLINICCHAT_BENCH_NATS_LISTEN") != ""
	var dataDir string
	env := startBench(b, func(c *allinone.Config) {
		c.MemoryLimit = limit
		dataDir = c.DataDir
		if !listen {
			c.NATSListen = ""
		}
	})
	threads := env.threads(b, "bench", 8)
	idle := newInProcessIdleWatcher(b, env)
	lc := startLoadClient(b, env.in.HTTPAddr, 8, 1, "bench", "patient", "bench-patient", true)
	idle.wait(b)
	runtime.GC()
	samples := []memSample{readMemSample("before", 0)}
	sqliteBefore := printSQLiteMemory("before the sends", nil, 0)
	peak := samples[0].rss

	var sent atomic.Int64
	var mu sync.Mutex
	errs := make([]error, len(threads))
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	cpu0, gc0 := processCPU(), gcCPU()
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // RSS peak and the quarter marks, every 100 ms; a line every 5 s
		defer close(sampled)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		next := int64(total / 4)
		nextLine := start
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			s := readMemSample("", sent.Load())
			if time.Now().After(nextLine) {
				nextLine = nextLine.Add(5 * time.Second)
				s.printSeries(time.Since(start))
			}
			mu.Lock()
			peak = max(peak, s.rss)
			var profile string
			if s.msgs >= next && next < int64(total) {
				pct := 100 * next / int64(total)
				s.label = fmt.Sprintf("after %d%% of the sends", pct)
				samples = append(samples, s)
				next += int64(total / 4)
				profile = fmt.Sprintf("steady-rate-heap-%d", pct)
			}
			mu.Unlock()
			if profile != "" && os.Getenv("CLINICCHAT_BENCH_MEMORY_CLASSES") != "" {
				printMemoryClasses()
			}
			if profile != "" { // the heap at the last GC, mid-run
				if err := heapProfileTo(profile); err != nil {
					fmt.Println("  heap profile:", err)
				}
			}
		}
	}()
	var next atomic.Int64
	var wg sync.WaitGroup
	for w, t := range threads {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(total); i = next.Add(1) {
				// The rate's schedule: message i leaves at start + i·interval,
				// at once when the senders are behind it.
				if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
					<-time.After(d)
				}
				if _, err := t.staff.send(t.conv, "Your appointment is confirmed", fmt.Sprintf("steady-%d-%d", i, start.UnixNano())); err != nil {
					errs[w] = err
					return
				}
				sent.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	idle.wait(b)
	cpu, gc := processCPU()-cpu0, gcCPU()-gc0
	close(stop)
	<-sampled
	samples = append(samples, readMemSample("pipeline idle", sent.Load()))
	printSQLiteMemory("pipeline idle", sqliteBefore, sent.Load())
	writeHeapProfile(b, "steady-rate-heap") // with CLINICCHAT_BENCH_CPUPROFILE=dir
	runtime.GC()
	samples = append(samples, readMemSample("idle, after a GC", sent.Load()))
	lc.stop()

	fmt.Printf("BenchmarkSteadyRateMemory: %d messages at a target of %d sends/s: %.0f sends/s achieved over %s, %.2f ms of CPU per message (the whole test process, until idle)\n",
		total, rate, float64(total)/elapsed.Seconds(), elapsed.Round(time.Millisecond), ms(cpu/time.Duration(total)))
	fmt.Printf("  the collector: %.2f ms of CPU per message (%.0f%% of the process's; the runtime's estimate, idle-time marking included)\n",
		ms(gc/time.Duration(total)), 100*gc.Seconds()/cpu.Seconds())
	for _, s := range samples {
		s.print()
	}
	last := samples[len(samples)-1]
	for _, st := range idle.streamSizes(b) {
		// The block files: their count shows the block size (4 MiB as
		// deployed, 8 MiB before mem17).
		blocks, _ := filepath.Glob(filepath.Join(dataDir, "nats", "jetstream", "*", "streams", st.name, "msgs", "*.blk"))
		fmt.Printf("  stream %-24s %7d events  %6.1f MiB  %5.0f B per message sent  %3d block files\n", st.name, st.msgs, float64(st.bytes)/(1<<20), float64(st.bytes)/float64(total), len(blocks))
	}
	fmt.Printf("  peak RSS %d MiB; live heap after the run %.0f B per message sent (minus before); RSS at idle %.0f B per message (minus before)\n",
		peak>>20, float64(samples[len(samples)-2].heapLive-samples[0].heapLive)/float64(total),
		float64(samples[len(samples)-2].rss-samples[0].rss)/float64(total))
	b.ReportMetric(float64(peak)/(1<<20), "peak-RSS-MiB")
	b.ReportMetric(float64(last.heapLive)/(1<<20), "live-heap-MiB")
}
