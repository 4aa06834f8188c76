package store_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// benchProjection projects b.N staff messages into 8 threads (clinicchat
// bench's shape: 8 senders, a thread each), round robin, each message
// telling two events, with apply, and reports the process CPU time, the
// database commits and (SQLite) the WAL frames (pages written) per message.
//
// prefill first projects that many messages into each thread (batches of
// 64, not counted), so that the measured ones go into long threads.
func benchProjection(b *testing.B, backend testkit.Backend, prefill int, apply func(ctx context.Context, s *store.Store, ms []domain.MessageApplied)) {
	ctx := context.Background()
	dbDir := b.TempDir()
	if backend.Name == "sqlite" {
		backend.DSN = func(testing.TB) string { return filepath.Join(dbDir, "test.db") }
	}
	db := testkit.OpenDB(b, backend)
	s, err := store.New(ctx, db)
	require.NoError(b, err)
	var commits atomic.Int64
	db.OnCommit(func() { commits.Add(1) })
	reg := prometheus.NewRegistry()
	reg.MustRegister(db.Collector())
	frames := func() float64 { // SQLite's WAL frames (pages) written; 0 on PostgreSQL
		mfs, err := reg.Gather()
		require.NoError(b, err)
		for _, mf := range mfs {
			if mf.GetName() == "clinicchat_sqldb_wal_frames_total" {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		return 0
	}
	const threads = 8
	var convs []string
	t0 := time.Now()
	for i := range threads {
		c, _, err := s.Create(ctx, domain.Conversation{Practice: "p1", ID: ids.New(), PatientID: fmt.Sprintf("p%d", i),
			PatientDisplayName: "P", State: domain.Active, CreateTime: t0}, none)
		require.NoError(b, err)
		convs = append(convs, c.ID)
	}
	messages := func(from, n int) []domain.MessageApplied {
		ms := make([]domain.MessageApplied, n)
		for j := range ms {
			i := from + j
			ms[j] = domain.MessageApplied{Practice: "p1", ConversationID: convs[i%threads], Seq: int64(i/threads + 1),
				Sender: fmt.Sprintf("users/u%d", i%threads), Time: t0.Add(time.Duration(i) * time.Millisecond), Preview: "a message preview"}
		}
		return ms
	}
	pre := messages(0, prefill*threads)
	for i := 0; i < len(pre); i += 64 {
		_, err := s.ApplyMessages(ctx, pre[i:min(i+64, len(pre))], benchEvents)
		require.NoError(b, err)
	}
	ms := messages(len(pre), b.N)
	var before syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	c0, f0 := commits.Load(), frames()
	b.ResetTimer()
	apply(ctx, s, ms)
	b.StopTimer()
	if dir := os.Getenv("PROJECTION_KEEP"); dir != "" && backend.Name == "sqlite" {
		keepWAL(b, dbDir, dir)
	}
	var after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
	b.ReportMetric(float64(commits.Load()-c0)/float64(b.N), "commits/msg")
	if backend.Name == "sqlite" {
		b.ReportMetric((frames()-f0)/float64(b.N), "frames/msg")
	}
}

// keepWAL copies the database in from and its WAL to dir (before the WAL is
// checkpointed away), for sqldb's WAL page count (WALPAGES=dir go test
// ./services/platform/sqldb -run '^TestWALPages$' -v: the pages the last
// commits wrote, by b-tree).
func keepWAL(b *testing.B, from, dir string) {
	require.NoError(b, os.MkdirAll(dir, 0o755))
	for _, f := range []string{"test.db", "test.db-wal"} {
		src, err := os.ReadFile(filepath.Join(from, f))
		require.NoError(b, err)
		require.NoError(b, os.WriteFile(filepath.Join(dir, f), src, 0o644))
	}
}

func benchEvents(_ domain.MessageApplied, c domain.Conversation, recipients []string) []domain.Event {
	out := make([]domain.Event, 0, 1+len(recipients))
	for range 1 + len(recipients) {
		id := ids.New()
		out = append(out, domain.Event{ID: id, Subject: "clinicchat.conversation.test",
			Msg: &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: c.Practice, Resource: c.Name()}}})
	}
	return out
}

// concurrently runs f for each message on 16 goroutines (as the projection
// consumed before batches: natsx.Consume with Concurrency 16).
func concurrently(ms []domain.MessageApplied, f func(m domain.MessageApplied)) {
	next := make(chan domain.MessageApplied)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range next {
				f(m)
			}
		}()
	}
	for _, m := range ms {
		next <- m
	}
	close(next)
	wg.Wait()
}

// BenchmarkApplyMessages: the projection's cost per message by batch size
// (the batch consumer hands over what has arrived, up to 64), and with one
// message per transaction on 16 goroutines (the consumer before batches).
//
//	go test ./services/conversation/internal/store -run '^$' -bench ApplyMessages -benchtime 3000x
func BenchmarkApplyMessages(b *testing.B) {
	for _, backend := range testkit.Backends() {
		b.Run(backend.Name+"/concurrent=16", func(b *testing.B) {
			benchProjection(b, backend, 0, func(ctx context.Context, s *store.Store, ms []domain.MessageApplied) {
				concurrently(ms, func(m domain.MessageApplied) {
					_, err := s.ApplyMessages(ctx, []domain.MessageApplied{m}, benchEvents)
					if err != nil {
						panic(err)
					}
				})
			})
		})
		for _, n := range []int{1, 4, 8, 16, 64} {
			batches := func(b *testing.B, prefill int) {
				benchProjection(b, backend, prefill, func(ctx context.Context, s *store.Store, ms []domain.MessageApplied) {
					for i := 0; i < len(ms); i += n {
						_, err := s.ApplyMessages(ctx, ms[i:min(i+n, len(ms))], benchEvents)
						require.NoError(b, err)
					}
				})
			}
			b.Run(fmt.Sprintf("%s/batch=%d", backend.Name, n), func(b *testing.B) { batches(b, 0) })
			if n == 1 || n == 8 { // the same into 10,000-message threads (issue 10: cost flat in thread length)
				b.Run(fmt.Sprintf("%s/thread=10000/batch=%d", backend.Name, n), func(b *testing.B) { batches(b, 10000) })
			}
		}
	}
}
