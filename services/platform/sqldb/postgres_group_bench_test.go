package sqldb_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkPostgresGroupCommit runs send-shaped writes (the thread's
// counter upsert, a message insert, the outbox row held back to the
// COMMIT: delivery's send) from W goroutines at once through a DB with L
// group-commit lanes (L=0: every write its own transaction, as before),
// each goroutine into a thread of its own (threads=own) or all into two
// (threads=2: every write wants a row another may hold). It prints
// commits/op (transactions per write, from the top-level transaction id
// each outbox row records), alone/op (writes that gave way and ran again
// alone) and cpu-ns/op (this process's CPU per write; the server's is not
// counted).
//
//	CLINICCHAT_TEST_POSTGRES_DSN=postgres://… go test ./services/platform/sqldb -run '^$' \
//	  -bench PostgresGroupCommit -benchtime 2000x
func BenchmarkPostgresGroupCommit(b *testing.B) {
	base := testkit.OpenDB(b, testkit.Backends()[1])
	ctx := context.Background()
	if _, err := base.Raw().ExecContext(ctx, `CREATE TABLE seqs (thread TEXT PRIMARY KEY, last BIGINT NOT NULL);
		CREATE TABLE msgs (thread TEXT NOT NULL, seq BIGINT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (thread, seq));
		CREATE TABLE ob (oseq BIGSERIAL PRIMARY KEY, thread TEXT NOT NULL, seq BIGINT NOT NULL, tx BIGINT NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	var schema string
	if err := base.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		b.Fatal(err)
	}
	var run atomic.Int64
	for _, threads := range []string{"own", "2"} {
		for _, w := range []int{8, 32} {
			for _, lanes := range []int{0, 1, 2, 4} {
				b.Run(fmt.Sprintf("threads=%s/W=%d/L=%d", threads, w, lanes), func(b *testing.B) {
					db := openPGSchema(b, schema, fmt.Sprintf("&group_commit_lanes=%d", lanes))
					r := run.Add(1)
					var next atomic.Int64
					send := func(thread string) error {
						return db.Write(ctx, func(tx *sqldb.Tx) error {
							var seq int64
							if err := tx.QueryRow(ctx, `INSERT INTO seqs (thread, last) VALUES (?, 1)
								ON CONFLICT (thread) DO UPDATE SET last = seqs.last + 1 RETURNING last`, thread).Scan(&seq); err != nil {
								return err
							}
							if _, err := tx.Exec(ctx, `INSERT INTO msgs (thread, seq, body) VALUES (?, ?, ?)`, thread, seq, "hello"); err != nil {
								return err
							}
							return tx.ExecAtCommit(ctx, `INSERT INTO ob (thread, seq, tx) VALUES (?, ?, CAST(txid_current() AS BIGINT))`, thread, seq)
						})
					}
					var o0 int64
					_ = base.QueryRow(ctx, `SELECT COALESCE(MAX(oseq), 0) FROM ob`).Scan(&o0)
					cpu0 := cpuNanos()
					b.ResetTimer()
					var wg sync.WaitGroup
					for g := range w {
						wg.Add(1)
						go func() {
							defer wg.Done()
							thread := fmt.Sprintf("r%d-g%d", r, g)
							if threads == "2" {
								thread = fmt.Sprintf("r%d-g%d", r, g%2)
							}
							for next.Add(1) <= int64(b.N) {
								if err := send(thread); err != nil {
									b.Error(err)
									return
								}
							}
						}()
					}
					wg.Wait()
					b.StopTimer()
					cpu := cpuNanos() - cpu0
					var txs, rows int64
					if err := base.QueryRow(ctx, `SELECT count(DISTINCT tx), count(*) FROM ob WHERE oseq > ?`, o0).Scan(&txs, &rows); err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(float64(txs)/float64(rows), "commits/op")
					b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
					b.ReportMetric(float64(sqldb.AloneWrites(db))/float64(b.N), "alone/op")
				})
			}
		}
	}
}

func cpuNanos() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Nanoseconds()
}
