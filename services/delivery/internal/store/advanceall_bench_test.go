package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkAdvanceAll measures read receipts in the shape of the read
// consumer's batches (HandleConversationReads) under `clinicchat bench
// --mode read`: 64 threads of unread staff messages, each op one
// AdvanceAll of 64 READ receipts, one per thread, each turning exactly one
// more message READ (its message.updated event in the outbox). One commit
// serves 64 receipts, so what is left is the receipts' statements.
// cpu-µs/receipt is the process's CPU (the SQLite writer's included;
// PostgreSQL's own is not). Run:
//
//	go test ./services/delivery/internal/store -run '^$' -bench AdvanceAll -benchtime 200x -benchmem
func BenchmarkAdvanceAll(b *testing.B) {
	const threads = 64
	for _, be := range testkit.Backends() {
		b.Run(be.Name, func(b *testing.B) {
			ctx := context.Background()
			s, _ := openStore(b, be)
			var sends errgroup.Group // at once: they share commits
			for i := range threads {
				sends.Go(func() error {
					for range b.N + 1 {
						if _, _, err := s.Send(ctx, msg(fmt.Sprint("c", i), "users/u1", ids.New(), "Your crown is ready"), oneEvent); err != nil {
							return err
						}
					}
					return nil
				})
			}
			if err := sends.Wait(); err != nil {
				b.Fatal(err)
			}
			perMessage := func(_ domain.Advance, ms []domain.Message) []domain.Event {
				var out []domain.Event
				for _, m := range ms {
					out = append(out, oneEvent(m)...)
				}
				return out
			}
			as := make([]domain.Advance, threads)
			run := func(upTo int64) {
				for i := range as {
					as[i] = domain.Advance{Practice: "p1", ConversationID: fmt.Sprint("c", i), ReaderIsPatient: true,
						Reader: "patients/pat", UpTo: upTo, To: domain.Read, At: time.Now().UTC()}
				}
				if err := s.AdvanceAll(ctx, as, perMessage); err != nil {
					b.Fatal(err)
				}
			}
			run(1) // every thread's mark row exists
			b.ReportAllocs()
			b.ResetTimer()
			t0 := testkit.CPUTime()
			for i := range b.N {
				run(int64(i) + 2)
			}
			cpu := testkit.CPUTime() - t0
			b.StopTimer()
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*threads), "cpu-µs/receipt")
		})
	}
}
