package store_test

import (
	"context"
	"testing"

	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store/migrations"
	"github.com/clinicchat/clinicchat/services/platform/outbox/outboxtest"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// The PostgreSQL outbox without its UNIQUE id (0007, as SQLite's 0008) keeps
// its unpublished rows and its seqs, and an id written again is its own row.
func TestPostgresUpgradeDropsOutboxUniqueID(t *testing.T) {
	outboxtest.PostgresUpgradeDropsUniqueID(t, migrations.FS, ".", "0007", func(ctx context.Context, db *sqldb.DB) error {
		_, err := store.New(ctx, db)
		return err
	})
}
