package store_test

import (
	"context"
	"testing"

	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store/migrations"
	"github.com/clinicchat/clinicchat/services/platform/outbox/outboxtest"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// The outbox made again without its UNIQUE id (0008, SQLite) keeps its
// unpublished rows and its seqs.
func TestUpgradeKeepsOutbox(t *testing.T) {
	outboxtest.UpgradeKeepsOutbox(t, migrations.FS, ".", "0008", func(ctx context.Context, db *sqldb.DB) error {
		_, err := store.New(ctx, db)
		return err
	})
}

// The outbox made again without AUTOINCREMENT (0009, SQLite) keeps its
// unpublished rows, and the seqs go on after the highest ever taken, also
// when the relay had emptied the table (the sqlite_sequence row is kept).
func TestUpgradeKeepsOutboxSeqs(t *testing.T) {
	outboxtest.UpgradeKeepsOutbox(t, migrations.FS, ".", "0009", func(ctx context.Context, db *sqldb.DB) error {
		_, err := store.New(ctx, db)
		return err
	})
}

// A new database's outbox has no AUTOINCREMENT: its seqs are the writer's.
func TestOutboxSeqsWithoutAutoincrement(t *testing.T) {
	outboxtest.SeqsWithoutAutoincrement(t, func(ctx context.Context, db *sqldb.DB) error {
		_, err := store.New(ctx, db)
		return err
	})
}
