package sqldb

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// ErrSchemaNewer is returned (wrapped) when a database was migrated by a
// newer release than the running binary: it refuses to start.
var ErrSchemaNewer = errors.New("database schema is newer than this binary")

// ErrSchemaBehind is returned (wrapped) by a check-only start when the
// database lacks migrations this binary needs.
var ErrSchemaBehind = errors.New("database schema is older than this binary")

type checkOnlyKey struct{}

// CheckOnly returns a context under which Migrate applies nothing and only
// checks that the schema is exactly the version the binary knows (a service
// started with --migrate-on-start=false, after a separate `migrate` run).
func CheckOnly(ctx context.Context) context.Context {
	return context.WithValue(ctx, checkOnlyKey{}, true)
}

func checkOnly(ctx context.Context) bool {
	v, _ := ctx.Value(checkOnlyKey{}).(bool)
	return v
}

// AppliedVersions lists the migration versions applied to db, in order
// (none for a new database).
func AppliedVersions(ctx context.Context, db *DB) ([]int64, error) {
	var exists bool
	var err error
	if db.dialect == Postgres {
		err = db.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists)
	} else {
		var n int
		err = db.QueryRow(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'`).Scan(&n)
		exists = n > 0
	}
	if err != nil {
		return nil, fmt.Errorf("read schema version: %w", err)
	}
	if !exists {
		return nil, nil
	}
	rows, err := db.Query(ctx, `SELECT version FROM schema_migrations ORDER BY version`)
	if err != nil {
		return nil, fmt.Errorf("read schema version: %w", err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// SchemaVersion is the highest migration version applied to db (0: none).
func SchemaVersion(ctx context.Context, db *DB) (int64, error) {
	vs, err := AppliedVersions(ctx, db)
	if err != nil || len(vs) == 0 {
		return 0, err
	}
	return vs[len(vs)-1], nil
}

// KnownVersion is the highest migration version in dir of fsys for db's
// dialect: the schema version this binary is written for.
func KnownVersion(fsys fs.FS, dir string, d Dialect) (int64, error) {
	entries, err := fs.ReadDir(fsys, path.Join(dir, d.String()))
	if err != nil {
		return 0, fmt.Errorf("read migrations: %w", err)
	}
	var known int64
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		num, _, _ := strings.Cut(e.Name(), "_")
		v, err := strconv.ParseInt(num, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("migration %s: name must start with a number", e.Name())
		}
		known = max(known, v)
	}
	return known, nil
}

// CheckSchema reports whether db's schema is the version this binary knows:
// ErrSchemaNewer when a newer release migrated it, ErrSchemaBehind when
// migrations are missing.
func CheckSchema(ctx context.Context, db *DB, fsys fs.FS, dir string) error {
	if err := refuseNewer(ctx, db, fsys, dir); err != nil {
		return err
	}
	applied, err := SchemaVersion(ctx, db)
	if err != nil {
		return err
	}
	known, err := KnownVersion(fsys, dir, db.dialect)
	if err != nil {
		return err
	}
	if applied < known {
		return fmt.Errorf("%w: the database is at version %d, this binary needs %d: run the service's `migrate` command first (or start it with --migrate-on-start)",
			ErrSchemaBehind, applied, known)
	}
	return nil
}

// refuseNewer fails when db carries a migration newer than any in fsys.
func refuseNewer(ctx context.Context, db *DB, fsys fs.FS, dir string) error {
	applied, err := SchemaVersion(ctx, db)
	if err != nil {
		return err
	}
	known, err := KnownVersion(fsys, dir, db.dialect)
	if err != nil {
		return err
	}
	if applied > known {
		return fmt.Errorf("%w: the database is at version %d, this binary knows versions up to %d: run the newer release (or roll the database back)",
			ErrSchemaNewer, applied, known)
	}
	return nil
}
