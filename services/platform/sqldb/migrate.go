package sqldb

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

// Migrate applies the numbered migrations in dir of fsys ("0001_init.sql", …)
// that are not applied yet, each in its own transaction, in order. The dir
// for a dialect is "<dir>/sqlite" or "<dir>/postgres".
//
// A database migrated by a newer release (a version above every file) is
// refused with ErrSchemaNewer; under CheckOnly(ctx) nothing is applied and
// the schema is only checked (CheckSchema).
func Migrate(ctx context.Context, db *DB, fsys fs.FS, dir string) error {
	if checkOnly(ctx) {
		return CheckSchema(ctx, db, fsys, dir)
	}
	if err := refuseNewer(ctx, db, fsys, dir); err != nil {
		return err
	}
	dir = path.Join(dir, db.dialect.String())
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return fmt.Errorf("read migrations: %w", err)
	}
	type mig struct {
		version int
		name    string
	}
	var migs []mig
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		num, _, _ := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if err != nil {
			return fmt.Errorf("migration %s: name must start with a number", e.Name())
		}
		migs = append(migs, mig{v, e.Name()})
	}
	sort.Slice(migs, func(i, j int) bool { return migs[i].version < migs[j].version })
	if _, err := db.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	for _, m := range migs {
		body, err := fs.ReadFile(fsys, path.Join(dir, m.name))
		if err != nil {
			return err
		}
		err = db.Write(ctx, func(tx *Tx) error {
			var n int
			if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = ?`, m.version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return nil
			}
			if db.dialect == Postgres {
				// Serialize concurrent starts of several replicas.
				if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(7342001)`); err != nil {
					return err
				}
				if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = ?`, m.version).Scan(&n); err != nil || n > 0 {
					return err
				}
			}
			for _, stmt := range splitStatements(string(body)) {
				if _, err := tx.Exec(ctx, stmt); err != nil {
					return fmt.Errorf("%s: %w", m.name, err)
				}
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version) VALUES (?)`, m.version)
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate %s: %w", m.name, err)
		}
	}
	return nil
}

// splitStatements splits a migration on lines that are exactly "-- +statement"
// when present (for bodies with semicolons, e.g. triggers), else on ';'.
func splitStatements(body string) []string {
	var parts []string
	if strings.Contains(body, "-- +statement") {
		parts = strings.Split(body, "-- +statement")
	} else {
		parts = strings.Split(body, ";")
	}
	var out []string
	for _, p := range parts {
		if s := strings.TrimSpace(stripComments(p)); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func stripComments(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "--") {
			continue
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}
