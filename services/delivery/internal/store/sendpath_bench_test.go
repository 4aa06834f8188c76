package store_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkSendPath is the delivery database's share of `clinicchat bench
// --senders 8` on SQLite: 8 threads, each sending one message after another
// (a bench-sized text, a request id and an event as large as a
// message.created), each message then marked DELIVERED (MarkDelivered, a
// deferred write that joins the sends' commits) and every tenth message's
// thread READ (AdvanceAll). cpu-µs/msg is the test process's CPU (the
// writer's included), frames/msg the WAL frames (pages) its commits wrote,
// commits/msg the durable commits. Run:
//
//	go test ./services/delivery/internal/store -run '^$' -bench SendPath -benchtime 4000x
//
// thread=new starts from empty threads; thread=10000 first fills each
// thread with 10,000 messages, read and marked read (issue 10: a send into
// a 10,000-message thread should cost what one into a new thread does).
//
// With SENDPATH_KEEP=DIR it copies the database and its WAL to DIR at the
// end (before the WAL is checkpointed away): the WAL's frame headers name
// the pages the last commits wrote, and SQLite's dbstat table which b-tree
// each page belongs to (BENCHMARKS.md, sqlite14).
func BenchmarkSendPath(b *testing.B) {
	b.Run("thread=new", func(b *testing.B) { sendPath(b, 0) })
	b.Run("thread=10000", func(b *testing.B) { sendPath(b, 10000) })
}

// prefillSQL inserts messages 1 to ? of a thread (?) from users/u1, read.
const prefillSQL = `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
	INSERT INTO messages (` + "practice, conversation_id, seq, patient_id, sender, sender_role, from_patient, text, extras, sensitive," + `
		status, create_time, deliver_time, read_time, read_by, request_id, content_hash, sender_display_name)
	SELECT 'p1', ?, i, 'pat', 'users/u1', 'dentist', 0, ?, '{}', 0, 3, ?, ?, ?, 'patients/pat', ? || i, '', '' FROM n`

func sendPath(b *testing.B, prefill int) {
	const threads = 8
	ctx := context.Background()
	be := testkit.Backends()[0] // SQLite
	dbDir := b.TempDir()
	be.DSN = func(testing.TB) string { return filepath.Join(dbDir, "test.db") }
	s, db := openStore(b, be)
	reg := prometheus.NewRegistry()
	reg.MustRegister(db.Collector())
	counter := func(name string) float64 {
		mfs, err := reg.Gather()
		if err != nil {
			b.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		return 0
	}
	text := strings.Repeat("x", 64)
	detail := strings.Repeat("p", 300) // a message.created's size: the message's fields
	event := func(m domain.Message) []domain.Event {
		id := ids.New()
		return []domain.Event{{ID: id, Subject: "clinicchat.delivery.message.created",
			Msg: &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: m.Practice, Resource: m.ConversationID, Detail: detail}}}}
	}
	per := func(_ domain.Advance, ms []domain.Message) []domain.Event {
		var out []domain.Event
		for _, m := range ms {
			out = append(out, event(m)...)
		}
		return out
	}
	run := func(n int) {
		var g errgroup.Group
		for i := range threads {
			g.Go(func() error {
				conv := fmt.Sprint("c", i)
				for range n {
					m, _, err := s.Send(ctx, msg(conv, "users/u1", ids.New(), text), event)
					if err != nil {
						return err
					}
					a := domain.Advance{Practice: "p1", ConversationID: conv, ReaderIsPatient: true, Reader: "patients/pat",
						UpTo: m.Seq, To: domain.Delivered, At: time.Now().UTC()}
					if err := s.MarkDelivered(ctx, 2*time.Millisecond, []domain.Advance{a}, per); err != nil {
						return err
					}
					if m.Seq%10 == 0 {
						a.To = domain.Read
						if err := s.AdvanceAll(ctx, []domain.Advance{a}, per); err != nil {
							return err
						}
					}
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
	}
	if prefill > 0 {
		at := time.Now().UTC()
		for i := range threads {
			conv := fmt.Sprint("c", i)
			err := db.Write(ctx, func(tx *sqldb.Tx) error {
				_, err := tx.Exec(ctx, prefillSQL, prefill, conv, text, at.UnixMicro(), at.UnixMicro(), at.UnixMicro(), conv+"-prefill-")
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			// The marks at the last prefilled message, as its reader left them.
			a := domain.Advance{Practice: "p1", ConversationID: conv, ReaderIsPatient: true, Reader: "patients/pat",
				UpTo: int64(prefill), To: domain.Read, At: at}
			if err := s.AdvanceAll(ctx, []domain.Advance{a}, per); err != nil {
				b.Fatal(err)
			}
		}
	}
	run(20)
	n := max(1, b.N/threads)
	frames0, commits0 := counter("clinicchat_sqldb_wal_frames_total"), counter("clinicchat_sqldb_commits_total")
	b.ReportAllocs()
	b.ResetTimer()
	t0 := testkit.CPUTime()
	run(n)
	cpu := testkit.CPUTime() - t0
	b.StopTimer()
	if dir := os.Getenv("SENDPATH_KEEP"); dir != "" {
		_ = os.MkdirAll(dir, 0o755)
		for _, f := range []string{"test.db", "test.db-wal"} {
			src, _ := os.ReadFile(filepath.Join(dbDir, f))
			_ = os.WriteFile(filepath.Join(dir, f), src, 0o644)
		}
	}
	msgs := float64(n * threads)
	b.ReportMetric(float64(cpu.Microseconds())/msgs, "cpu-µs/msg")
	b.ReportMetric((counter("clinicchat_sqldb_wal_frames_total")-frames0)/msgs, "frames/msg")
	b.ReportMetric((counter("clinicchat_sqldb_commits_total")-commits0)/msgs, "commits/msg")
}
