package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkAdvance measures the receipts at the repository in the bench's
// shape: into a thread that already holds 2,000 staff messages, all read,
// each op sends one staff message (not timed), marks it DELIVERED and, every
// 10th op, marks the thread READ up to it (one Advance each, its message.updated
// events written to the outbox). ns/op, allocs/op and cpu-µs/op (the process's CPU, the SQLite writer's
// included; PostgreSQL's own is not) are the receipts' alone.
// Run:
//
//	go test ./services/delivery/internal/store -run '^$' -bench Advance -benchmem
func BenchmarkAdvance(b *testing.B) {
	for _, be := range testkit.Backends() {
		b.Run(be.Name, func(b *testing.B) {
			ctx := context.Background()
			db := testkit.OpenDB(b, be)
			s, err := store.New(ctx, db)
			if err != nil {
				b.Fatal(err)
			}
			var last int64
			send := func() {
				m, _, err := s.Send(ctx, msg("c1", "users/u1", ids.New(), "Your crown is ready"), oneEvent)
				if err != nil {
					b.Fatal(err)
				}
				last = m.Seq
			}
			perMessage := func(ms []domain.Message) []domain.Event {
				var out []domain.Event
				for _, m := range ms {
					out = append(out, oneEvent(m)...)
				}
				return out
			}
			var cpu time.Duration
			advance := func(to domain.Status) {
				t0 := testkit.CPUTime()
				defer func() { cpu += testkit.CPUTime() - t0 }()
				if _, err := s.Advance(ctx, domain.Advance{Practice: "p1", ConversationID: "c1", ReaderIsPatient: true,
					Reader: "patients/pat", UpTo: last, To: to, At: time.Now().UTC()}, perMessage); err != nil {
					b.Fatal(err)
				}
			}
			for range 2000 {
				send()
			}
			advance(domain.Read)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				send()
				b.StartTimer()
				advance(domain.Delivered)
				if i%10 == 9 {
					advance(domain.Read)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}
