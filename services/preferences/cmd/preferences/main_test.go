package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
	"github.com/clinicchat/clinicchat/services/preferences"
)

// "preferences migrate" applies the schema and exits, configured by flags or, as a
// Kubernetes Job runs it, by CLINICCHAT_* environment variables alone.
func TestMigrateSubcommand(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			var out bytes.Buffer
			byFlag := b.DSN(t)
			require.NoError(t, run([]string{"migrate", "--database-dsn", byFlag}, &out))
			require.Contains(t, out.String(), "preferences: applied")
			requireLatest(t, byFlag)

			byEnv := b.DSN(t)
			t.Setenv("CLINICCHAT_DATABASE_DSN", byEnv)
			out.Reset()
			require.NoError(t, run([]string{"migrate"}, &out))
			require.Contains(t, out.String(), "preferences: applied")
			requireLatest(t, byEnv)

			out.Reset()
			require.NoError(t, run([]string{"migrate"}, &out))
			require.Contains(t, out.String(), "nothing to apply")
		})
	}
}

// requireLatest checks that dsn's schema is the version this binary needs.
func requireLatest(t *testing.T, dsn string) {
	t.Helper()
	ctx := context.Background()
	db, err := sqldb.Open(ctx, dsn)
	require.NoError(t, err)
	defer db.Close()
	v, err := sqldb.SchemaVersion(ctx, db)
	require.NoError(t, err)
	require.Positive(t, v)
	require.NoError(t, preferences.Migrate(sqldb.CheckOnly(ctx), db), "schema at the latest version")
}
