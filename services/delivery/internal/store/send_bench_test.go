package store_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkSend measures the delivery send path at the repository: Send with
// one outbox event (sequence upsert, message insert that finds a repeat, outbox
// insert in one durable Write), on SQLite (synchronous=FULL, group commit) and
// PostgreSQL, by one goroutine and by 8 and 32 goroutines at once, each on a
// conversation of its own. It reports sends/s and writes/commit: how many
// sends each durable commit carried (SQLite group commit batches the writes
// waiting for the writer; on PostgreSQL every Write is its own transaction and
// the server group-commits the WAL flushes). Run:
//
//	go test ./services/delivery/internal/store -run '^$' -bench Send -benchtime 2s
func BenchmarkSend(b *testing.B) {
	for _, be := range testkit.Backends() {
		b.Run(be.Name, func(b *testing.B) {
			for _, g := range []int{1, 8, 32} {
				name := "sequential"
				if g > 1 {
					name = fmt.Sprintf("parallel=%d", g)
				}
				b.Run(name, func(b *testing.B) { benchSend(b, be, g) })
			}
		})
	}
}

func benchSend(b *testing.B, be testkit.Backend, goroutines int) {
	ctx := context.Background()
	db := testkit.OpenDB(b, be)
	s, err := store.New(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	var commits atomic.Int64
	db.OnCommit(func() { commits.Add(1) })
	send := func(conv string) error {
		_, _, err := s.Send(ctx, msg(conv, "users/u1", ids.New(), "Your crown is ready"), oneEvent)
		return err
	}
	if err := send("warm-up"); err != nil {
		b.Fatal(err)
	}
	commits.Store(0)
	b.ResetTimer()
	if goroutines == 1 {
		for range b.N {
			if err := send("c0"); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		// RunParallel starts parallelism×GOMAXPROCS goroutines.
		b.SetParallelism(max(1, goroutines/runtime.GOMAXPROCS(0)))
		var lanes atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			conv := fmt.Sprintf("c%d", lanes.Add(1))
			for pb.Next() {
				if err := send(conv); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sends/s")
	if n := commits.Load(); n > 0 {
		b.ReportMetric(float64(b.N)/float64(n), "writes/commit")
	}
}
