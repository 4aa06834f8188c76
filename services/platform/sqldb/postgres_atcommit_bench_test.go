package sqldb_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkPostgresAtCommit compares a write's last insert run with Exec
// (last=exec: its own round trip, then COMMIT's) with one held back by
// ExecAtCommit (last=at-commit: with COMMIT), interleaved in one process
// on one schema, for two shapes: a send's (an insert, then the outbox's
// insert) and a write of that one insert alone (delivery's Record; with
// ExecAtCommit, no BEGIN or COMMIT). syscalls/op is the process's read and
// write system calls per write, cpu-ns/op its CPU time per write (the
// server's not included).
//
//	CLINICCHAT_TEST_POSTGRES_DSN=postgres://… go test ./services/platform/sqldb -run '^$' \
//	  -bench PostgresAtCommit -benchmem -benchtime 3000x -count 3
func BenchmarkPostgresAtCommit(b *testing.B) {
	db := testkit.OpenDB(b, testkit.Backends()[1])
	ctx := context.Background()
	if _, err := db.Exec(ctx, kvTable); err != nil {
		b.Fatal(err)
	}
	var keys atomic.Int64
	last := func(tx *sqldb.Tx, held bool, k string) error {
		if held {
			return tx.ExecAtCommit(ctx, `INSERT INTO kv (k, i, v) VALUES (?, ?, 'v')`, k, 1)
		}
		return insertKV(ctx, tx, k, 1)
	}
	for _, shape := range []string{"send", "alone"} {
		for _, g := range []int{1, 8} {
			for _, held := range []bool{false, true} {
				mode := map[bool]string{false: "exec", true: "at-commit"}[held]
				b.Run(fmt.Sprintf("%s/goroutines=%d/last=%s", shape, g, mode), func(b *testing.B) {
					b.SetParallelism(g)
					sys0, cpu0 := syscalls(b), testkit.CPUTime()
					b.ResetTimer()
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							k := fmt.Sprint("k", keys.Add(1))
							err := db.Write(ctx, func(tx *sqldb.Tx) error {
								if shape == "send" {
									if err := insertKV(ctx, tx, k, 0); err != nil {
										return err
									}
								}
								return last(tx, held, k)
							})
							if err != nil {
								b.Error(err)
								return
							}
						}
					})
					b.StopTimer()
					b.ReportMetric(float64(syscalls(b)-sys0)/float64(b.N), "syscalls/op")
					b.ReportMetric(float64(testkit.CPUTime()-cpu0)/float64(b.N), "cpu-ns/op")
				})
			}
		}
	}
}
