package sqldb

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

// Migrations live in "<dir>/sqlite" and "<dir>/postgres" of an embedded
// fsys, one file per version: "0001_init.sql", "0002_add_x.sql", … The
// applied versions are rows of schema_migrations (version, checksum), the
// checksum being the SHA-256 of the file as applied.
//
// Rules:
//   - two files with one version number are refused;
//   - an applied migration whose file changed since (another checksum) is
//     refused, and nothing is applied: never edit an applied migration, add
//     a new one. Rows applied before checksums were kept (an older binary)
//     take the checksum of the file the first time a newer binary starts;
//   - a database migrated by a newer release (a version above every file)
//     is refused with ErrSchemaNewer (schema.go); under CheckOnly(ctx)
//     nothing is applied and the schema is only checked (CheckSchema).
//
// A file holds statements ended by ';'. A ';' inside a quoted string or
// identifier, a comment, a PostgreSQL dollar-quoted body ($$ … $$, $fn$ …
// $fn$) or a SQLite trigger's BEGIN … END does not end a statement. A line
// that is exactly "-- +statement" also ends one (older files use it).
const migrationsTable = "schema_migrations"

// migrationLock is the PostgreSQL advisory lock that serializes concurrent
// starts of several replicas.
const migrationLock = 7342001

type migration struct {
	version  int
	name     string
	body     string
	checksum string
}

// loadMigrations reads the dialect's migrations from fsys, in order.
func loadMigrations(fsys fs.FS, dir string) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var migs []migration
	byVersion := map[int]string{}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		num, _, _ := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: the name must start with a positive number and '_'", e.Name())
		}
		if other, dup := byVersion[v]; dup {
			return nil, fmt.Errorf("migrations %s and %s have the same version %d", other, e.Name(), v)
		}
		byVersion[v] = e.Name()
		body, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(body)
		migs = append(migs, migration{version: v, name: e.Name(), body: string(body), checksum: hex.EncodeToString(sum[:])})
	}
	sort.Slice(migs, func(i, j int) bool { return migs[i].version < migs[j].version })
	return migs, nil
}

// Migrate applies the migrations of dir in fsys that are not applied yet,
// each in its own transaction, in order, after checking that every applied
// one is unchanged (see the rules above). The dir for a dialect is
// "<dir>/sqlite" or "<dir>/postgres".
func Migrate(ctx context.Context, db *DB, fsys fs.FS, dir string) error {
	migs, err := loadMigrations(fsys, path.Join(dir, db.dialect.String()))
	if err != nil {
		return err
	}
	if checkOnly(ctx) {
		return CheckSchema(ctx, db, fsys, dir)
	}
	if err := refuseNewer(ctx, db, fsys, dir); err != nil {
		return err
	}
	// The table, and its checksum column for databases migrated by a binary
	// that kept none.
	err = db.Write(ctx, func(tx *Tx) error {
		if err := lockMigrations(ctx, tx); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+migrationsTable+` (version BIGINT PRIMARY KEY, checksum TEXT)`); err != nil {
			return err
		}
		has, err := hasChecksumColumn(ctx, tx)
		if err != nil || has {
			return err
		}
		_, err = tx.Exec(ctx, `ALTER TABLE `+migrationsTable+` ADD COLUMN checksum TEXT`)
		return err
	})
	if err != nil {
		return fmt.Errorf("prepare %s: %w", migrationsTable, err)
	}
	for _, m := range migs {
		err := db.Write(ctx, func(tx *Tx) error {
			if err := lockMigrations(ctx, tx); err != nil {
				return err
			}
			var sum sql.NullString
			err := tx.QueryRow(ctx, `SELECT checksum FROM `+migrationsTable+` WHERE version = ?`, m.version).Scan(&sum)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				// Not applied yet.
			case err != nil:
				return err
			case !sum.Valid || sum.String == "":
				_, err := tx.Exec(ctx, `UPDATE `+migrationsTable+` SET checksum = ? WHERE version = ?`, m.checksum, m.version)
				return err
			case sum.String != m.checksum:
				return fmt.Errorf("%s was applied with checksum %.12s… but the file now has %.12s…: an applied migration never changes (add a new one)",
					m.name, sum.String, m.checksum)
			default:
				return nil
			}
			for _, stmt := range SplitStatements(m.body) {
				if _, err := tx.Exec(ctx, stmt); err != nil {
					return fmt.Errorf("%s: %w", m.name, err)
				}
			}
			_, err = tx.Exec(ctx, `INSERT INTO `+migrationsTable+` (version, checksum) VALUES (?, ?)`, m.version, m.checksum)
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate %s: %w", m.name, err)
		}
	}
	return nil
}

func lockMigrations(ctx context.Context, tx *Tx) error {
	if tx.dialect != Postgres {
		return nil // one writer: the group-commit loop
	}
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(`+strconv.Itoa(migrationLock)+`)`)
	return err
}

func hasChecksumColumn(ctx context.Context, tx *Tx) (bool, error) {
	q := `SELECT COUNT(*) FROM pragma_table_info('` + migrationsTable + `') WHERE name = 'checksum'`
	if tx.dialect == Postgres {
		q = `SELECT COUNT(*) FROM information_schema.columns
			WHERE table_schema = current_schema() AND table_name = '` + migrationsTable + `' AND column_name = 'checksum'`
	}
	var n int
	err := tx.QueryRow(ctx, q).Scan(&n)
	return n > 0, err
}

// SplitStatements splits a migration into its statements (see the rules
// above), without comments-only or empty ones.
func SplitStatements(body string) []string {
	var out []string
	var cur strings.Builder
	flush := func() {
		// Comment-only pieces are dropped; statements keep their comments.
		if strings.TrimSpace(stripComments(cur.String())) != "" {
			out = append(out, strings.TrimSpace(cur.String()))
		}
		cur.Reset()
	}
	depth := 0       // BEGIN/CASE … END nesting inside a block statement
	inBlock := false // the statement is a CREATE TRIGGER, FUNCTION or PROCEDURE
	for i := 0; i < len(body); {
		c := body[i]
		switch {
		case c == '-' && strings.HasPrefix(body[i:], "--"):
			end := strings.IndexByte(body[i:], '\n')
			if end < 0 {
				end = len(body) - i
			}
			line := body[i : i+end]
			if strings.TrimSpace(line) == "-- +statement" && lineStart(body, i) {
				flush()
				depth, inBlock = 0, false
			} else {
				cur.WriteString(line)
			}
			i += end
		case c == '/' && strings.HasPrefix(body[i:], "/*"):
			end := strings.Index(body[i+2:], "*/")
			if end < 0 {
				end = len(body) - i - 2
			} else {
				end += 2
			}
			cur.WriteString(body[i : i+2+end])
			i += 2 + end
		case c == '\'' || c == '"' || c == '`':
			j := i + 1
			for j < len(body) {
				if body[j] == c {
					if j+1 < len(body) && body[j+1] == c { // doubled quote
						j += 2
						continue
					}
					break
				}
				j++
			}
			j = min(j+1, len(body))
			cur.WriteString(body[i:j])
			i = j
		case c == '$':
			if tag, ok := dollarTag(body[i:]); ok {
				end := strings.Index(body[i+len(tag):], tag)
				j := len(body)
				if end >= 0 {
					j = i + len(tag) + end + len(tag)
				}
				cur.WriteString(body[i:j])
				i = j
				continue
			}
			cur.WriteByte(c)
			i++
		case isWordByte(c) && (i == 0 || !isWordByte(body[i-1])):
			j := i
			for j < len(body) && isWordByte(body[j]) {
				j++
			}
			word := strings.ToUpper(body[i:j])
			if !inBlock && (word == "TRIGGER" || word == "FUNCTION" || word == "PROCEDURE") && startsCreate(cur.String()) {
				inBlock = true
			}
			if inBlock {
				switch word {
				case "BEGIN", "CASE":
					depth++
				case "END":
					depth = max(depth-1, 0)
				}
			}
			cur.WriteString(body[i:j])
			i = j
		case c == ';' && depth == 0:
			flush()
			inBlock = false
			i++
		default:
			cur.WriteByte(c)
			i++
		}
	}
	flush()
	return out
}

// startsCreate reports whether the statement so far is "CREATE [OR
// REPLACE] [TEMP|TEMPORARY]" and nothing else (so the next word decides).
func startsCreate(sofar string) bool {
	f := strings.Fields(strings.ToUpper(stripComments(sofar)))
	if len(f) == 0 || f[0] != "CREATE" {
		return false
	}
	f = f[1:]
	if len(f) >= 2 && f[0] == "OR" && f[1] == "REPLACE" {
		f = f[2:]
	}
	if len(f) == 1 && (f[0] == "TEMP" || f[0] == "TEMPORARY") {
		f = f[1:]
	}
	return len(f) == 0
}

// dollarTag returns the PostgreSQL dollar-quote opening s starts with ("$$"
// or "$tag$").
func dollarTag(s string) (string, bool) {
	for j := 1; j < len(s); j++ {
		switch c := s[j]; {
		case c == '$':
			return s[:j+1], true
		case isWordByte(c) && !(j == 1 && c >= '0' && c <= '9'):
		default:
			return "", false
		}
	}
	return "", false
}

func isWordByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// lineStart reports whether only blanks precede position i on its line.
func lineStart(s string, i int) bool {
	for i > 0 && (s[i-1] == ' ' || s[i-1] == '\t') {
		i--
	}
	return i == 0 || s[i-1] == '\n'
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
