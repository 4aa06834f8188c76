package sqldb_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkPostgresWrite compares a PostgreSQL write whose BEGIN goes with
// its first statement (begin=pipelined, the default) with one whose BEGIN
// is a round trip of its own (begin=alone: database/sql's BeginTx, as
// before), interleaved in one process on one schema, for three shapes: one
// insert; four inserts (a send's statement count); a query first, then an
// insert (delivery's INSERT … RETURNING and the projection's SELECT … FOR
// UPDATE start their writes with a query). syscalls/op is the process's
// read and write system calls (network included) per write; cpu-ns/op its
// CPU time per write (the server's not included).
//
//	CLINICCHAT_TEST_POSTGRES_DSN=postgres://… go test ./services/platform/sqldb -run '^$' \
//	  -bench PostgresWrite -benchmem -benchtime 3000x -count 3
func BenchmarkPostgresWrite(b *testing.B) {
	db := testkit.OpenDB(b, testkit.Backends()[1])
	ctx := context.Background()
	if _, err := db.Exec(ctx, kvTable); err != nil {
		b.Fatal(err)
	}
	var keys atomic.Int64
	shapes := []struct {
		name string
		fn   func(tx *sqldb.Tx) error
	}{
		{"exec1", func(tx *sqldb.Tx) error { return insertKV(ctx, tx, fmt.Sprint("k", keys.Add(1)), 0) }},
		{"exec4", func(tx *sqldb.Tx) error {
			k := fmt.Sprint("k", keys.Add(1))
			for i := range 4 {
				if err := insertKV(ctx, tx, k, i); err != nil {
					return err
				}
			}
			return nil
		}},
		{"query-first", func(tx *sqldb.Tx) error {
			k := fmt.Sprint("k", keys.Add(1))
			var n int
			if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM kv WHERE k = ?`, k).Scan(&n); err != nil {
				return err
			}
			return insertKV(ctx, tx, k, n)
		}},
	}
	for _, s := range shapes {
		for _, g := range []int{1, 8} {
			for _, pipelined := range []bool{false, true} {
				mode := map[bool]string{false: "alone", true: "pipelined"}[pipelined]
				b.Run(fmt.Sprintf("%s/goroutines=%d/begin=%s", s.name, g, mode), func(b *testing.B) {
					sqldb.PipelineBegin(db, pipelined)
					b.SetParallelism(g)
					sys0, cpu0 := syscalls(b), testkit.CPUTime()
					b.ResetTimer()
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if err := db.Write(ctx, s.fn); err != nil {
								b.Error(err)
								return
							}
						}
					})
					b.StopTimer()
					b.ReportMetric(float64(syscalls(b)-sys0)/float64(b.N), "syscalls/op")
					b.ReportMetric(float64(testkit.CPUTime()-cpu0)/float64(b.N), "cpu-ns/op")
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
				})
			}
		}
	}
}

// syscalls is the process's read and write system calls so far.
func syscalls(b *testing.B) int64 {
	raw, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Skip("no /proc/self/io")
	}
	var n int64
	for _, line := range bytes.Split(raw, []byte("\n")) {
		for _, key := range []string{"syscr: ", "syscw: "} {
			if v, ok := bytes.CutPrefix(line, []byte(key)); ok {
				i, _ := strconv.ParseInt(string(v), 10, 64)
				n += i
			}
		}
	}
	return n
}
