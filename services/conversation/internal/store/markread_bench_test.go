package store_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkMarkRead is `clinicchat bench --mode read`'s shape on the store:
// 8 threads of staff messages, their 8 patients each marking read one
// message further per call, concurrently, b.N receipts in all. It reports
// the process CPU time and database commits per receipt. Each thread holds
// b.N/8 messages, all unread at the start (the unread count the answer
// carries is two index lookups, whatever the backlog).
func BenchmarkMarkRead(b *testing.B) {
	for _, backend := range testkit.Backends() {
		b.Run(backend.Name, func(b *testing.B) {
			ctx := context.Background()
			db := testkit.OpenDB(b, backend)
			s, err := store.New(ctx, db)
			require.NoError(b, err)
			var commits int64
			var mu sync.Mutex
			db.OnCommit(func() { mu.Lock(); commits++; mu.Unlock() })
			const threads = 8
			per := b.N/threads + 1
			t0 := time.Now()
			convs := make([]string, threads)
			var ms []domain.MessageApplied
			for i := range convs {
				c, _, err := s.Create(ctx, domain.Conversation{Practice: "p1", ID: ids.New(), PatientID: fmt.Sprintf("p%d", i),
					PatientDisplayName: "P", State: domain.Active, CreateTime: t0}, none)
				require.NoError(b, err)
				convs[i] = c.ID
				for seq := 1; seq <= per; seq++ {
					ms = append(ms, domain.MessageApplied{Practice: "p1", ConversationID: c.ID, Seq: int64(seq), Sender: "users/u1",
						Time: t0.Add(time.Duration(seq) * time.Millisecond), Preview: "a message preview"})
				}
			}
			for len(ms) > 0 {
				n := min(len(ms), 500)
				_, err := s.ApplyMessages(ctx, ms[:n], benchEvents)
				require.NoError(b, err)
				ms = ms[n:]
			}
			read := func(c domain.Conversation, advanced bool) []domain.Event {
				id := ids.New()
				return []domain.Event{{ID: id, Subject: "clinicchat.conversation.test",
					Msg: &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: c.Practice, Resource: c.Name()}}}}
			}
			before := testkit.CPUTime()
			mu.Lock()
			c0 := commits
			mu.Unlock()
			b.ResetTimer()
			var wg sync.WaitGroup
			for i, conv := range convs {
				v := domain.Viewer{Principal: fmt.Sprintf("patients/p%d", i), IsPatient: true}
				wg.Go(func() {
					for seq := 1; seq <= b.N/threads+boolInt(i < b.N%threads); seq++ {
						c, err := s.MarkRead(ctx, "p1", conv, v, int64(seq), allow, read)
						if err != nil || c.ReadSeq != int64(seq) {
							b.Errorf("mark read %d: %v (read seq %d)", seq, err, c.ReadSeq)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			cpu := testkit.CPUTime() - before
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/receipt")
			mu.Lock()
			b.ReportMetric(float64(commits-c0)/float64(b.N), "commits/receipt")
			mu.Unlock()
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
