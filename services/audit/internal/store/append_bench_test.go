package store_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
	"github.com/clinicchat/clinicchat/services/audit/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkAppendAll appends batches of records to one practice's log, one
// transaction per batch (as the audit's consumers do); an op is one record.
//
//	go test ./services/audit/internal/store -run '^$' -bench AppendAll -benchmem
func BenchmarkAppendAll(b *testing.B) {
	for _, be := range testkit.Backends() {
		for _, batch := range []int{1, 16, 128} {
			b.Run(fmt.Sprintf("%s/batch=%d", be.Name, batch), func(b *testing.B) {
				st, err := store.New(context.Background(), testkit.OpenDB(b, be))
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				es := make([]domain.Entry, 0, batch)
				b.ResetTimer()
				for i := 0; i < b.N; {
					es = es[:0]
					for ; len(es) < batch && i < b.N; i++ {
						es = append(es, entry("p", fmt.Sprintf("e%d", i), i))
					}
					if _, _, err := st.AppendAll(ctx, es); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
