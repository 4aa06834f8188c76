package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
	"github.com/clinicchat/clinicchat/services/preferences/internal/domain"
)

// benchPatients is the size of the one practice the search benchmark fills.
const benchPatients = 100_000

// BenchmarkSearch fills one practice with 100,000 synthetic patients (one
// transaction of multi-row inserts) on each backend and measures search
// latency for one-, two- and three-word queries typed the way staff type
// them: each word a prefix (of random length) of a word of a real patient's
// name, the last word usually cut short. It reports p50 and p99 per query
// (ms) with b.ReportMetric and prints a table. Run:
//
//	go test ./services/preferences/internal/store -run '^$' -bench Search -benchtime 2000x
func BenchmarkSearch(b *testing.B) {
	for _, be := range testkit.Backends() {
		b.Run(be.Name, func(b *testing.B) {
			ctx := context.Background()
			db := testkit.OpenDB(b, be)
			st, err := New(ctx, db)
			if err != nil {
				b.Fatal(err)
			}
			ps := fill(b, db, benchPatients)
			r := rand.New(rand.NewPCG(5, 5))
			// Stress: the most common names and single letters of this
			// deliberately skewed population (the top first and last names are
			// each about 10% of patients).
			stress := []string{"m", "ma", "maria", "garcia", "j g", "maria garcia", "ana garcia lopez", "jose maria", "ma di mu", "zz", "x y z"}
			b.Run("stress", func(b *testing.B) { runQueries(b, st, be.Name, "stress", stress, false) })
			for _, words := range []int{1, 2, 3} {
				for _, incl := range []bool{false, true} {
					queries := benchQueries(r, ps, words, 1000)
					label := fmt.Sprintf("words=%d/eligible-only", words)
					if incl {
						label = fmt.Sprintf("words=%d/include-ineligible", words)
					}
					b.Run(label, func(b *testing.B) { runQueries(b, st, be.Name, label, queries, incl) })
				}
			}
			// Last, as they change the data.
			b.Run("write/rename", func(b *testing.B) { benchWrites(b, st, ps, true) })
			b.Run("write/opt-in", func(b *testing.B) { benchWrites(b, st, ps, false) })
		})
	}
}

// benchWrites measures the write path on the filled practice: renaming a
// patient (patient row, ~14 search rows out and in, prefix counts) or
// toggling their chat opt-in (patient row and the eligible flag of their
// search rows), each one durable transaction with an outbox event.
func benchWrites(b *testing.B, st *Store, ps []domain.Patient, rename bool) {
	ctx := context.Background()
	names := newNamer(77)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		p := ps[(i*7919)%len(ps)]
		start := time.Now()
		_, err := st.UpdatePatient(ctx, p.Practice, p.ID, func(cur *domain.Patient) (*domain.Patient, []domain.Event, error) {
			next := *cur
			if rename {
				next.DisplayName = names.name()
			} else {
				next.ChatOptIn = !cur.ChatOptIn
			}
			ev := domain.Event{ID: fmt.Sprintf("bench-%d-%d", i, time.Now().UnixNano()), Subject: "clinicchat.preferences.patient.upserted", Msg: &emptypb.Empty{}}
			return &next, []domain.Event{ev}, nil
		})
		lat = append(lat, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.Logf("%-8s %-32s n=%5d p50=%6.3fms p99=%6.3fms (one writer, durable commit each)", st.db.Dialect(), map[bool]string{true: "write/rename", false: "write/opt-in"}[rename], b.N, ms(p50), ms(p99))
}

// runQueries runs b.N searches cycling through queries and reports their
// latency percentiles. BENCH_SLOW=1 also logs the slowest queries. The
// mean CPU time of the calling thread per query (the kernel accounts it in
// scheduler ticks, so only the mean is meaningful) shows the work of an
// in-process SQLite query apart from waiting for a CPU on a shared machine.
func runQueries(b *testing.B, st *Store, backend, label string, queries []string, incl bool) {
	ctx := context.Background()
	type slow struct {
		q string
		d time.Duration
		n int
	}
	lat := make([]time.Duration, 0, b.N)
	perQuery := map[string][]time.Duration{}
	var cpuTotal time.Duration
	var slows []slow
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	found := 0
	b.ResetTimer()
	for i := range b.N {
		q := queries[i%len(queries)]
		start, startCPU := time.Now(), threadCPU()
		hits, err := st.SearchPatients(ctx, domain.SearchQuery{
			Practice: "bench", Words: domain.QueryWords(q), IncludeIneligible: incl, Limit: 21,
		})
		d := time.Since(start)
		lat = append(lat, d)
		perQuery[q] = append(perQuery[q], d)
		cpuTotal += threadCPU() - startCPU
		if err != nil {
			b.Fatal(err)
		}
		if len(hits) > 0 {
			found++
		}
		if os.Getenv("BENCH_SLOW") != "" {
			slows = append(slows, slow{q, d, len(hits)})
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	cpuMean := cpuTotal / time.Duration(b.N)
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(ms(cpuMean), "mean-thread-cpu-ms")
	b.ReportMetric(float64(found)/float64(b.N), "nonempty")
	if len(queries) <= 20 {
		for _, q := range queries {
			d := perQuery[q]
			slices.Sort(d)
			if len(d) > 0 {
				b.Logf("%-8s %-20q p50=%6.3fms p90=%6.3fms", backend, q, ms(d[len(d)/2]), ms(d[len(d)*9/10]))
			}
		}
	}
	slices.SortFunc(slows, func(a, b slow) int { return int(b.d - a.d) })
	for _, x := range slows[:min(len(slows), 12)] {
		b.Logf("slow: %q %v hits=%d", x.q, x.d, x.n)
	}
	b.Logf("%-8s %-32s n=%5d p50=%6.3fms p99=%6.3fms max=%7.3fms | mean thread CPU %6.3fms",
		backend, label, b.N, ms(p50), ms(p99), ms(lat[len(lat)-1]), ms(cpuMean))
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// fill inserts n synthetic patients into practice "bench" in one transaction
// and refreshes the planner statistics.
func fill(b *testing.B, db *sqldb.DB, n int) []domain.Patient {
	b.Helper()
	ctx := context.Background()
	names := newNamer(1)
	ps := make([]domain.Patient, n)
	for i := range ps {
		ps[i] = names.patient("bench", i)
	}
	start := time.Now()
	if err := db.Write(ctx, func(tx *sqldb.Tx) error { return insertPatients(ctx, tx, ps) }); err != nil {
		b.Fatal(err)
	}
	filled := time.Since(start)
	if db.Dialect() == sqldb.Postgres {
		_, err := db.Raw().ExecContext(ctx, `VACUUM ANALYZE`)
		if err != nil {
			b.Fatal(err)
		}
	} else if _, err := db.Exec(ctx, `ANALYZE`); err != nil {
		b.Fatal(err)
	}
	var rows int
	if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM patient_prefixes`).Scan(&rows); err != nil {
		b.Fatal(err)
	}
	b.Logf("%s: filled %d patients (%d search rows) in %v; analyzed in %v", db.Dialect(), n, rows, filled.Round(time.Millisecond),
		(time.Since(start) - filled).Round(time.Millisecond))
	return ps
}

// benchQueries makes n queries of the given number of words from the names of
// random patients of ps: each word a prefix of a name word of at least 2 letters
// (or the whole word), the last word cut shortest, as typed.
func benchQueries(r *rand.Rand, ps []domain.Patient, words, n int) []string {
	out := make([]string, 0, n)
	for len(out) < n {
		ws := strings.Fields(strings.ReplaceAll(ps[r.IntN(len(ps))].DisplayName, "-", " "))
		if len(ws) < words {
			continue
		}
		start := r.IntN(len(ws) - words + 1)
		pick := ws[start : start+words]
		q := make([]string, words)
		for i, w := range pick {
			rs := []rune(w)
			keep := len(rs)
			if i == words-1 || r.IntN(3) == 0 {
				keep = min(len(rs), 2+r.IntN(len(rs)))
			}
			q[i] = string(rs[:keep])
		}
		out = append(out, strings.Join(q, " "))
	}
	return out
}
