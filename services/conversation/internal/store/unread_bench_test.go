package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkUnreadBacklog reads threads whose viewer has a large unread
// backlog: 20 threads of `backlog` patient messages each, none read by the
// staff viewer. list lists the 20 (an unread count each), get reads one. It
// reports the process CPU time per read besides ns/op.
func BenchmarkUnreadBacklog(b *testing.B) {
	for _, backend := range testkit.Backends() {
		for _, backlog := range []int{10, 3000} {
			b.Run(fmt.Sprintf("%s/backlog=%d", backend.Name, backlog), func(b *testing.B) {
				ctx := context.Background()
				s, err := store.New(ctx, testkit.OpenDB(b, backend))
				require.NoError(b, err)
				const threads = 20
				t0 := time.Now()
				var ms []domain.MessageApplied
				var first string
				for i := range threads {
					c, _, err := s.Create(ctx, domain.Conversation{Practice: "p1", ID: ids.New(), PatientID: fmt.Sprintf("p%d", i),
						PatientDisplayName: "P", State: domain.Active, CreateTime: t0}, none)
					require.NoError(b, err)
					if i == 0 {
						first = c.ID
					}
					for seq := 1; seq <= backlog; seq++ {
						ms = append(ms, domain.MessageApplied{Practice: "p1", ConversationID: c.ID, Seq: int64(seq), FromPatient: true,
							Sender: fmt.Sprintf("patients/p%d", i), Time: t0.Add(time.Duration(seq) * time.Millisecond), Preview: "a message"})
					}
				}
				for len(ms) > 0 {
					n := min(len(ms), 500)
					_, err := s.ApplyMessages(ctx, ms[:n], noEvents)
					require.NoError(b, err)
					ms = ms[n:]
				}
				viewer := domain.Viewer{Principal: "users/u9"}
				b.Run("list", func(b *testing.B) {
					cpuPerOp(b, func() {
						list, _, err := s.List(ctx, domain.ListQuery{Practice: "p1", Viewer: viewer, Limit: threads})
						if err != nil || len(list) != threads || list[0].UnreadCount != backlog {
							b.Fatalf("list: %v, %d threads", err, len(list))
						}
					})
				})
				b.Run("get", func(b *testing.B) {
					cpuPerOp(b, func() {
						c, err := s.Get(ctx, "p1", first, viewer)
						if err != nil || c.UnreadCount != backlog {
							b.Fatalf("get: %v, unread %d", err, c.UnreadCount)
						}
					})
				})
			})
		}
	}
}

// cpuPerOp runs op b.N times and reports the process CPU time per op.
func cpuPerOp(b *testing.B, op func()) {
	b.ReportAllocs()
	before := testkit.CPUTime()
	b.ResetTimer()
	for range b.N {
		op()
	}
	b.StopTimer()
	cpu := testkit.CPUTime() - before
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
}
