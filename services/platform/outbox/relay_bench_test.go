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
// NATS) spread over a number of subjects: with one subject every row waits
// for the acknowledgement of the one before it (a round trip each); with
// many, rows of different subjects are pipelined. Reports rows/s.
func BenchmarkRelayFlush(b *testing.B) {
	for _, subjects := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("subjects=%d", subjects), func(b *testing.B) {
			ctx := context.Background()
			_, _, js := testkit.NATS(b)
			db := testkit.OpenDB(b, testkit.Backends()[0])
			_, err := db.Exec(ctx, schema)
			require.NoError(b, err)
			relay := outbox.NewRelay(db, js, testkit.Logger(b))
			const rows = 1024
			var total time.Duration
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
				t0 := time.Now()
				for left := rows; left > 0; {
					k, err := relay.Flush(ctx)
					require.NoError(b, err)
					left -= k
				}
				total += time.Since(t0)
			}
			b.ReportMetric(float64(rows*b.N)/total.Seconds(), "rows/s")
		})
	}
}
