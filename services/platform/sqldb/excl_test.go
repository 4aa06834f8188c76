package sqldb_test

import (
	"context"
	"database/sql"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// A SQLite database belongs to the process that opened it ("unix-excl"):
// its connections share the wal-index in memory (no -shm file, no fcntl
// per transaction), another connection of the same process — the
// all-in-one's backup opens its own — still reads and writes it, and a
// second process is refused instead of sharing the file.
func TestSQLiteDatabaseBelongsToItsProcess(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "t.db")
	db, err := sqldb.Open(ctx, path)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	_, err = db.Exec(ctx, `CREATE TABLE kv (k TEXT PRIMARY KEY)`)
	require.NoError(t, err)
	_, err = db.Exec(ctx, `INSERT INTO kv (k) VALUES ('a')`)
	require.NoError(t, err)
	var n int
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM kv`).Scan(&n))
	require.Equal(t, 1, n)
	_, err = os.Stat(path + "-shm")
	require.ErrorIs(t, err, os.ErrNotExist, "the wal-index is in memory")

	// Another connection of this process, with the default VFS, as the
	// backup's: it sees the commits and its writes are seen.
	other, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	require.NoError(t, err)
	t.Cleanup(func() { _ = other.Close() })
	require.NoError(t, other.QueryRow(`SELECT count(*) FROM kv`).Scan(&n))
	require.Equal(t, 1, n)
	_, err = other.Exec(`INSERT INTO kv (k) VALUES ('b')`)
	require.NoError(t, err)
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM kv`).Scan(&n))
	require.Equal(t, 2, n)
	_, err = db.Exec(ctx, `INSERT INTO kv (k) VALUES ('c')`)
	require.NoError(t, err)
	require.NoError(t, other.QueryRow(`SELECT count(*) FROM kv`).Scan(&n))
	require.Equal(t, 3, n)

	cmd := exec.Command(os.Args[0], "-test.run=^TestSecondProcessOpensSQLite$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SQLDB_SECOND_PROCESS_DB="+path)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "refused: ")
}

// TestSecondProcessOpensSQLite is the second process of
// TestSQLiteDatabaseBelongsToItsProcess (it does nothing on its own).
func TestSecondProcessOpensSQLite(t *testing.T) {
	path := os.Getenv("SQLDB_SECOND_PROCESS_DB")
	if path == "" {
		t.Skip("run by TestSQLiteDatabaseBelongsToItsProcess")
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(200)")
	require.NoError(t, err)
	defer db.Close()
	var n int
	err = db.QueryRow(`SELECT count(*) FROM kv`).Scan(&n)
	require.Error(t, err, "a second process read the database")
	t.Logf("refused: %v", err)
	os.Stdout.WriteString("refused: " + err.Error() + "\n")
}
