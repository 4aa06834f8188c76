// Package testkit gives tests real components: an embedded NATS server with
// JetStream, SQLite files and (when reachable) a PostgreSQL schema of their
// own, and signed tokens.
package testkit

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natstest "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// Logger is a test logger.
func Logger(t testing.TB) *zap.Logger { return zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)) }

// NATS starts an embedded NATS server with JetStream on a random port, with
// clinicchat's streams declared, and returns it with a JetStream client.
func NATS(t testing.TB) (*server.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts := natstest.DefaultTestOptions
	opts.Port = -1
	opts.JetStream = true
	opts.StoreDir = t.TempDir()
	ns := natstest.RunServer(&opts)
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := natsx.EnsureStreams(ctx, js, natsx.StreamsConfig{}); err != nil {
		t.Fatal(err)
	}
	return ns, nc, js
}

// PostgresDSN is the server tests use: $CLINICCHAT_TEST_POSTGRES_DSN, or the
// local one on 127.0.0.1:5432 (database test, trust auth).
func PostgresDSN() string {
	if dsn := os.Getenv("CLINICCHAT_TEST_POSTGRES_DSN"); dsn != "" {
		return dsn
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// Backend is one database a contract suite runs against.
type Backend struct {
	Name string // "sqlite" or "postgres"
	// DSN opens a fresh, empty database of this backend for t.
	DSN func(t testing.TB) string
}

// Backends returns SQLite always and PostgreSQL when it is reachable. Where
// it is not, the PostgreSQL run is skipped with a message saying so, except
// under CI=true, where it fails: CI must run it.
func Backends() []Backend {
	return []Backend{
		{Name: "sqlite", DSN: func(t testing.TB) string { return filepath.Join(t.TempDir(), "test.db") }},
		{Name: "postgres", DSN: PostgresSchema},
	}
}

// PostgresSchema creates a schema of its own for t and returns a DSN whose
// search_path is that schema; the schema is dropped after the test.
func PostgresSchema(t testing.TB) string {
	t.Helper()
	base := PostgresDSN()
	db, err := sql.Open("pgx", base)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = db.PingContext(ctx)
		cancel()
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL at %s is not reachable in CI: %v", redact(base), err)
		}
		t.Skipf("PostgreSQL not reachable at %s (%v): skipping the PostgreSQL run; CI runs it", redact(base), err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := fmt.Sprintf("t_%x", b)
	if _, err := db.Exec(`CREATE SCHEMA ` + schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = db.Exec(`DROP SCHEMA ` + schema + ` CASCADE`)
		_ = db.Close()
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func redact(dsn string) string {
	if u, err := url.Parse(dsn); err == nil {
		return u.Redacted()
	}
	return "(dsn)"
}

// OpenDB opens a fresh database of backend b for t and closes it after.
func OpenDB(t testing.TB, b Backend) *sqldb.DB {
	t.Helper()
	db, err := sqldb.Open(context.Background(), b.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// Tokens signs tokens for tests with a fixed key.
type Tokens struct {
	Issuer auth.DevIssuer
}

// NewTokens returns a token issuer with a random key and its verifier.
func NewTokens() (*Tokens, auth.Verifier) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	return &Tokens{Issuer: auth.DevIssuer{Key: key, Issuer: auth.DevIssuerName}},
		auth.HMACVerifier{Key: key, Issuer: auth.DevIssuerName}
}

// Token signs a token; authAge is how long ago the user authenticated.
func (k *Tokens) Token(t testing.TB, subject, role, practice string, authAge time.Duration) string {
	t.Helper()
	tok, err := k.Issuer.Issue(subject, role, practice, strings.ToUpper(subject[:1])+subject[1:], authAge)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// Identity returns a verified identity for direct calls into app layers.
func (k *Tokens) Identity(t testing.TB, subject, role, practice string) auth.Identity {
	tok := k.Token(t, subject, role, practice, 0)
	return auth.Identity{Subject: subject, Role: role, Practice: practice, AuthTime: time.Now(), Token: tok}
}

// MigrateSubcommand checks a service binary's "migrate" subcommand on every
// backend: it applies the schema and exits, configured by flags or, as a
// Kubernetes init container runs it, by CLINICCHAT_* environment variables
// alone, and a second run has nothing to apply. run is the binary's run
// (args without the program name); migrate is the service's Migrate.
func MigrateSubcommand(t *testing.T, name string, run func(args []string, out io.Writer) error, migrate func(context.Context, *sqldb.DB) error) {
	t.Helper()
	for _, b := range Backends() {
		t.Run(b.Name, func(t *testing.T) {
			var out bytes.Buffer
			byFlag := b.DSN(t)
			require.NoError(t, run([]string{"migrate", "--database-dsn", byFlag}, &out))
			require.Contains(t, out.String(), name+": applied")
			requireLatestSchema(t, byFlag, migrate)

			byEnv := b.DSN(t)
			t.Setenv("CLINICCHAT_DATABASE_DSN", byEnv)
			out.Reset()
			require.NoError(t, run([]string{"migrate"}, &out))
			require.Contains(t, out.String(), name+": applied")
			requireLatestSchema(t, byEnv, migrate)

			out.Reset()
			require.NoError(t, run([]string{"migrate"}, &out))
			require.Contains(t, out.String(), "nothing to apply")
		})
	}
}

// requireLatestSchema checks that dsn's schema is the version migrate needs.
func requireLatestSchema(t *testing.T, dsn string, migrate func(context.Context, *sqldb.DB) error) {
	t.Helper()
	ctx := context.Background()
	db, err := sqldb.Open(ctx, dsn)
	require.NoError(t, err)
	defer db.Close()
	v, err := sqldb.SchemaVersion(ctx, db)
	require.NoError(t, err)
	require.Positive(t, v)
	require.NoError(t, migrate(sqldb.CheckOnly(ctx), db), "schema at the latest version")
}

// MigrateBefore brings db to the schema a service had before migration
// version (e.g. "0005"): it applies, with sqldb.Migrate, the migrations of
// fsys's dir (sqlite/ and postgres/) whose files sort before version. An
// upgrade test then writes data the old way and migrates the rest.
func MigrateBefore(t testing.TB, db *sqldb.DB, fsys fs.FS, dir, version string) {
	t.Helper()
	old := fstest.MapFS{}
	for _, dialect := range []string{"sqlite", "postgres"} {
		d := dialect
		if dir != "." {
			d = dir + "/" + dialect
		}
		entries, err := fs.ReadDir(fsys, d)
		require.NoError(t, err)
		for _, e := range entries {
			if e.IsDir() || e.Name() >= version {
				continue
			}
			body, err := fs.ReadFile(fsys, d+"/"+e.Name())
			require.NoError(t, err)
			old[d+"/"+e.Name()] = &fstest.MapFile{Data: body}
		}
	}
	require.NoError(t, sqldb.Migrate(context.Background(), db, old, dir))
}
