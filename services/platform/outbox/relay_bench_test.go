package outbox_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkRelayFlush relays a backlog of 1024 rows (SQLite, embedded
// NATS) spread over a number of subjects. Sent in waves, a subject's row
// waits for the acknowledgement of the one before it (with one subject a
// round trip per row); once the relay knows the stream's last sequence
// (after its first round) every batch is pipelined whatever the subjects.
// Reports rows/s, waits for acknowledgements (sequential round trips)
// per row, and the process's CPU time per row (relay, SQLite and the
// embedded NATS server together: unlike rows/s, it holds on a busy
// machine).
//
// batches=false sends every row on its own (one PubAck per row), as before
// fast batches; rows=8 relays commits of 8 rows (a round each, about what a
// relay takes per round in the all-in-one under load) instead of a backlog.
func BenchmarkRelayFlush(b *testing.B) {
	for _, batches := range []bool{true, false} {
		for _, rows := range []int{1024, 8} {
			for _, subjects := range []int{1, 8, 16, 256} {
				if rows < subjects {
					continue
				}
				b.Run(fmt.Sprintf("batches=%t/rows=%d/subjects=%d", batches, rows, subjects), func(b *testing.B) {
					ns, _, js := testkit.NATS(b)
					db := openOutboxDB(b, testkit.Backends()[0])
					relay := outbox.NewRelay(db, js, testkit.Logger(b))
					outbox.SetNoBatches(relay, !batches)
					in0, out0 := msgs(b, ns)
					n := benchRelay(b, db, relay, rows, subjects, relay.Flush)
					in1, out1 := msgs(b, ns)
					b.ReportMetric(float64(in1-in0+out1-out0)/float64(n), "nats-msgs/row")
				})
			}
		}
	}
}

// benchRelay writes a backlog of rows spread over subjects per iteration
// and times relaying it with round (Flush, or one round under a held
// lock), reporting rows/s, waits for acknowledgements per row, PubAcks read
// per row and CPU time per row; it returns the rows relayed.
func benchRelay(b *testing.B, db *sqldb.DB, relay *outbox.Relay, rows, subjects int, round func(context.Context) (int, error)) int {
	ctx := context.Background()
	var total, cpu time.Duration
	_, waits0 := relay.Stats()
	acks0 := relay.Acks()
	for n := 0; b.Loop(); n++ {
		b.StopTimer()
		require.NoError(b, db.Write(ctx, func(tx *sqldb.Tx) error {
			for i := range rows {
				id := fmt.Sprintf("bench-%d-%d", n, i)
				subject := natsx.Tenant(natsx.SubjectDeliveryAccess, "p", fmt.Sprintf("c%d", i%subjects))
				if err := outbox.Add(ctx, tx, id, subject, &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p"}}); err != nil {
					return err
				}
			}
			return nil
		}))
		b.StartTimer()
		t0, c0 := time.Now(), testkit.CPUTime()
		for left := rows; left > 0; {
			k, err := round(ctx)
			require.NoError(b, err)
			left -= k
		}
		total += time.Since(t0)
		cpu += testkit.CPUTime() - c0
	}
	_, waits1 := relay.Stats()
	b.ReportMetric(float64(rows*b.N)/total.Seconds(), "rows/s")
	b.ReportMetric(float64(waits1-waits0)/float64(rows*b.N), "waits/row")
	b.ReportMetric(float64(cpu.Microseconds())/float64(rows*b.N), "cpu-µs/row")
	b.ReportMetric(float64(relay.Acks()-acks0)/float64(rows*b.N), "acks/row")
	return rows * b.N
}

// BenchmarkRelayRoundsPostgres is BenchmarkRelayFlush on PostgreSQL, by
// rounds under one hold of the outbox lock (as Run under load; Flush gives
// the lock up, and with it the stream's last sequence, after every round),
// chained as the relay does and in waves throughout (what closing the
// frozen relay's gap would cost, RELIABILITY.md). Run:
//
//	go test ./services/platform/outbox -run '^$' -bench RelayRoundsPostgres -benchtime 10x
func BenchmarkRelayRoundsPostgres(b *testing.B) {
	for _, waves := range []bool{false, true} {
		for _, subjects := range []int{1, 8, 256} {
			b.Run(fmt.Sprintf("waves=%t/subjects=%d", waves, subjects), func(b *testing.B) {
				ctx := context.Background()
				_, _, js := testkit.NATS(b)
				db := openOutboxDB(b, testkit.Backends()[1])
				relay := outbox.NewRelay(db, js, testkit.Logger(b))
				outbox.SetWaves(relay, waves)
				defer func() { _, _ = relay.Flush(ctx) }() // gives the lock up
				benchRelay(b, db, relay, 1024, subjects, func(ctx context.Context) (int, error) { return outbox.Round(relay, ctx) })
			})
		}
	}
}
