package sqldb_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

func TestSplitStatements(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want []string
	}{
		{"plain", "CREATE TABLE a (x INT);\nCREATE TABLE b (y INT);\n", []string{"CREATE TABLE a (x INT)", "CREATE TABLE b (y INT)"}},
		{"no final semicolon", "CREATE TABLE a (x INT)", []string{"CREATE TABLE a (x INT)"}},
		{"semicolon in a string", "INSERT INTO a VALUES ('x;y', 'it''s; fine'); SELECT 1;", []string{"INSERT INTO a VALUES ('x;y', 'it''s; fine')", "SELECT 1"}},
		{"semicolon in an identifier", `CREATE TABLE "a;b" (x INT); SELECT 1`, []string{`CREATE TABLE "a;b" (x INT)`, "SELECT 1"}},
		{"comments", "-- first; not a split\nCREATE TABLE a (x INT); /* b; c */ SELECT 1; -- trailing; comment\n", []string{"-- first; not a split\nCREATE TABLE a (x INT)", "/* b; c */ SELECT 1"}},
		{"dollar-quoted body", "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  RAISE EXCEPTION 'no; never';\nEND\n$$;\nCREATE TRIGGER t BEFORE UPDATE ON a FOR EACH ROW EXECUTE FUNCTION f();",
			[]string{"CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  RAISE EXCEPTION 'no; never';\nEND\n$$", "CREATE TRIGGER t BEFORE UPDATE ON a FOR EACH ROW EXECUTE FUNCTION f()"}},
		{"tagged dollar quote", "DO $body$ BEGIN PERFORM 1; PERFORM '$$'; END $body$; SELECT $1", []string{"DO $body$ BEGIN PERFORM 1; PERFORM '$$'; END $body$", "SELECT $1"}},
		{"sqlite trigger", "CREATE TRIGGER a_no_update BEFORE UPDATE ON a\nBEGIN SELECT CASE WHEN 1 THEN RAISE(ABORT, 'a; append-only') END; SELECT 2; END;\nCREATE INDEX ai ON a (x);",
			[]string{"CREATE TRIGGER a_no_update BEFORE UPDATE ON a\nBEGIN SELECT CASE WHEN 1 THEN RAISE(ABORT, 'a; append-only') END; SELECT 2; END", "CREATE INDEX ai ON a (x)"}},
		{"temp trigger", "CREATE TEMP TRIGGER t AFTER INSERT ON a BEGIN DELETE FROM b; END; SELECT 1", []string{"CREATE TEMP TRIGGER t AFTER INSERT ON a BEGIN DELETE FROM b; END", "SELECT 1"}},
		{"a column named begin is no block", "CREATE TABLE a (\"begin\" INT, x INT); SELECT 1", []string{"CREATE TABLE a (\"begin\" INT, x INT)", "SELECT 1"}},
		{"statement markers", "CREATE TABLE a (x INT)\n-- +statement\n-- why\nCREATE TRIGGER t BEFORE DELETE ON a\nBEGIN SELECT RAISE(ABORT, 'no'); END\n",
			[]string{"CREATE TABLE a (x INT)", "-- why\nCREATE TRIGGER t BEFORE DELETE ON a\nBEGIN SELECT RAISE(ABORT, 'no'); END"}},
		{"only comments", "-- nothing here;\n\n", nil},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, sqldb.SplitStatements(tt.body), tt.name)
	}
}

// migrations returns a migrations FS for db's dialect with the given files.
func migrations(db *sqldb.DB, files map[string]string) testFS {
	out := testFS{}
	for name, body := range files {
		out["m/"+db.Dialect().String()+"/"+name] = body
	}
	return out
}

func TestMigrateRefusesDuplicateVersions(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			fsys := migrations(db, map[string]string{"0001_a.sql": "CREATE TABLE a (x BIGINT)", "0001_b.sql": "CREATE TABLE b (x BIGINT)"})
			err := sqldb.Migrate(ctx, db, fsys.FS(), "m")
			require.ErrorContains(t, err, "0001_a.sql and 0001_b.sql have the same version 1")
		})
	}
}

func TestMigrateRefusesAChangedAppliedMigration(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			v1 := migrations(db, map[string]string{"0001_a.sql": "CREATE TABLE a (x BIGINT);"})
			require.NoError(t, sqldb.Migrate(ctx, db, v1.FS(), "m"))

			edited := migrations(db, map[string]string{"0001_a.sql": "CREATE TABLE a (x BIGINT, y BIGINT);", "0002_b.sql": "CREATE TABLE b (x BIGINT);"})
			err := sqldb.Migrate(ctx, db, edited.FS(), "m")
			require.ErrorContains(t, err, "0001_a.sql was applied with checksum")
			require.ErrorContains(t, err, "an applied migration never changes")
			cur, latest, err := versions(ctx, db, edited)
			require.NoError(t, err)
			require.Equal(t, [2]int{1, 2}, [2]int{cur, latest}, "0002 is not applied after the refusal")
		})
	}
}

// TestMigrateUpgradesAnOlderVersionTable: a database migrated by the runner
// before checksums (schema_migrations with a version column only) keeps
// working: its applied versions are not re-run, they take the files'
// checksums, and a later edit is refused.
func TestMigrateUpgradesAnOlderVersionTable(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			// What the previous runner left: its table, and 0001 applied.
			for _, q := range []string{
				`CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)`,
				`CREATE TABLE a (x BIGINT)`,
				`INSERT INTO a (x) VALUES (7)`,
				`INSERT INTO schema_migrations (version) VALUES (1)`,
			} {
				_, err := db.Exec(ctx, q)
				require.NoError(t, err)
			}
			files := map[string]string{"0001_a.sql": "CREATE TABLE a (x BIGINT);", "0002_b.sql": "ALTER TABLE a ADD COLUMN y BIGINT;"}
			fsys := migrations(db, files)
			cur, latest, err := versions(ctx, db, fsys)
			require.NoError(t, err)
			require.Equal(t, [2]int{1, 2}, [2]int{cur, latest})

			require.NoError(t, sqldb.Migrate(ctx, db, fsys.FS(), "m"), "0001 is not run again")
			var x int
			require.NoError(t, db.QueryRow(ctx, `SELECT x FROM a WHERE y IS NULL`).Scan(&x))
			require.Equal(t, 7, x)
			var n int
			require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE checksum IS NULL OR checksum = ''`).Scan(&n))
			require.Zero(t, n, "every applied version has its checksum")
			require.NoError(t, sqldb.Migrate(ctx, db, fsys.FS(), "m"))

			files["0001_a.sql"] = "CREATE TABLE a (x BIGINT); -- edited"
			require.ErrorContains(t, sqldb.Migrate(ctx, db, migrations(db, files).FS(), "m"), "0001_a.sql was applied with checksum")
		})
	}
}

// TestMigrateTriggers: a migration with semicolons inside trigger bodies
// (SQLite BEGIN … END, PostgreSQL $$ … $$) applies whole, and the triggers
// work.
func TestMigrateTriggers(t *testing.T) {
	files := map[string]map[string]string{
		"sqlite": {"0001_log.sql": `CREATE TABLE log (x BIGINT, note TEXT);
-- Append-only; like the audit log.
CREATE TRIGGER log_no_update BEFORE UPDATE ON log
BEGIN
    SELECT RAISE(ABORT, 'log is append-only; never update');
END;
CREATE TRIGGER log_no_delete BEFORE DELETE ON log
BEGIN SELECT RAISE(ABORT, 'log is append-only'); END;
INSERT INTO log (x, note) VALUES (1, 'first; of many');
`},
		"postgres": {"0001_log.sql": `CREATE TABLE log (x BIGINT, note TEXT);
-- Append-only; like the audit log.
CREATE FUNCTION log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'log is append-only; never %', TG_OP;
END
$$;
CREATE TRIGGER log_no_change BEFORE UPDATE OR DELETE ON log
    FOR EACH ROW EXECUTE FUNCTION log_append_only();
INSERT INTO log (x, note) VALUES (1, 'first; of many');
`},
	}
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			fsys := migrations(db, files[db.Dialect().String()])
			require.NoError(t, sqldb.Migrate(ctx, db, fsys.FS(), "m"))
			var note string
			require.NoError(t, db.QueryRow(ctx, `SELECT note FROM log WHERE x = 1`).Scan(&note))
			require.Equal(t, "first; of many", note)
			_, err := db.Exec(ctx, `UPDATE log SET x = 2`)
			require.ErrorContains(t, err, "append-only")
			_, err = db.Exec(ctx, `DELETE FROM log`)
			require.ErrorContains(t, err, "append-only")
		})
	}
}

// versions is the database's schema version and the latest of fsys.
func versions(ctx context.Context, db *sqldb.DB, fsys testFS) (int, int, error) {
	cur, err := sqldb.SchemaVersion(ctx, db)
	if err != nil {
		return 0, 0, err
	}
	latest, err := sqldb.KnownVersion(fsys.FS(), "m", db.Dialect())
	return int(cur), int(latest), err
}

func TestSchemaVersions(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			both := migrations(db, map[string]string{"0001_a.sql": "CREATE TABLE a (x BIGINT);", "0002_b.sql": "CREATE TABLE b (x BIGINT);"})
			cur, latest, err := versions(ctx, db, both)
			require.NoError(t, err)
			require.Equal(t, [2]int{0, 2}, [2]int{cur, latest}, "a fresh database")
			require.NoError(t, sqldb.Migrate(ctx, db, both.FS(), "m"))
			cur, latest, err = versions(ctx, db, both)
			require.NoError(t, err)
			require.Equal(t, [2]int{2, 2}, [2]int{cur, latest})

			// An older binary knows 0001 only: the schema is newer than it.
			older := migrations(db, map[string]string{"0001_a.sql": "CREATE TABLE a (x BIGINT);"})
			cur, latest, err = versions(ctx, db, older)
			require.NoError(t, err)
			require.Equal(t, [2]int{2, 1}, [2]int{cur, latest})
			require.ErrorIs(t, sqldb.Migrate(ctx, db, older.FS(), "m"), sqldb.ErrSchemaNewer)
		})
	}
}
