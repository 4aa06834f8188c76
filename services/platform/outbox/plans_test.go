package outbox_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// The session holding the PostgreSQL outbox lock plans the relay's
// statements generically, and gives its connection back to the pool with
// the connection's own plan_cache_mode.
func TestPostgresRelaySessionPlansGenerically(t *testing.T) {
	ctx := context.Background()
	_, _, js := testkit.NATS(t)
	db := openOutboxDB(t, testkit.Backends()[1])
	r := outbox.NewRelay(db, js, testkit.Logger(t))
	var during []string
	outbox.SetAfterClaim(r, func(ctx context.Context) {
		v, err := outbox.HeldSetting(r, ctx, "plan_cache_mode")
		require.NoError(t, err)
		during = append(during, v)
	})
	// Hold every pooled connection, so that the relay's is one of them and
	// each is checked after.
	for i := range 3 {
		addFor(t, db, "c", i)
		n, err := r.Flush(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, n)
	}
	require.Equal(t, []string{"force_generic_plan", "force_generic_plan", "force_generic_plan"}, during)
	conns := make([]interface{ Close() error }, 0, 32)
	for range 32 {
		c, err := db.Raw().Conn(ctx)
		require.NoError(t, err)
		var v string
		require.NoError(t, c.QueryRowContext(ctx, `SELECT current_setting('plan_cache_mode')`).Scan(&v))
		require.Equal(t, "auto", v)
		conns = append(conns, c)
	}
	for _, c := range conns {
		require.NoError(t, c.Close())
	}
}
