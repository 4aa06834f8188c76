package sqldb_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// A binary refuses a database a newer release migrated, and a check-only
// start refuses one that lacks migrations; Migrate brings it up to date.
func TestSchemaVersionChecks(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			d := db.Dialect().String()
			v1 := testFS{"m/" + d + "/0001_a.sql": "CREATE TABLE a (x BIGINT)"}.FS()
			v2 := testFS{"m/" + d + "/0001_a.sql": "CREATE TABLE a (x BIGINT)",
				"m/" + d + "/0002_b.sql": "ALTER TABLE a ADD COLUMN z BIGINT"}.FS()

			v, err := sqldb.SchemaVersion(ctx, db)
			require.NoError(t, err)
			require.Zero(t, v, "a new database has no schema")
			err = sqldb.Migrate(sqldb.CheckOnly(ctx), db, v1, "m")
			require.ErrorIs(t, err, sqldb.ErrSchemaBehind)
			require.ErrorContains(t, err, "migrate")

			require.NoError(t, sqldb.Migrate(ctx, db, v2, "m"))
			v, err = sqldb.SchemaVersion(ctx, db)
			require.NoError(t, err)
			require.EqualValues(t, 2, v)
			require.NoError(t, sqldb.Migrate(sqldb.CheckOnly(ctx), db, v2, "m"))

			// The older binary (it knows version 1) meets version 2.
			err = sqldb.Migrate(ctx, db, v1, "m")
			require.ErrorIs(t, err, sqldb.ErrSchemaNewer)
			require.ErrorContains(t, err, "version 2")
			require.ErrorIs(t, sqldb.CheckSchema(ctx, db, v1, "m"), sqldb.ErrSchemaNewer)
		})
	}
}
