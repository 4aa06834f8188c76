package sqldb

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// walFrame is a frame of a SQLite WAL file: the page it holds, and whether
// it ends a commit.
type walFrame struct {
	page   uint32
	commit bool
}

// readWAL returns the frames of the WAL file's current generation (the
// frames whose salts are the header's), up to its last commit frame.
func readWAL(path string) ([]walFrame, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < 32 {
		return nil, nil
	}
	psz := int(binary.BigEndian.Uint32(b[8:12]))
	salt := b[16:24]
	var frames []walFrame
	last := 0
	for off := 32; off+24+psz <= len(b); off += 24 + psz {
		h := b[off : off+24]
		if string(h[8:16]) != string(salt) {
			break
		}
		frames = append(frames, walFrame{page: binary.BigEndian.Uint32(h[0:4]), commit: binary.BigEndian.Uint32(h[4:8]) != 0})
		if frames[len(frames)-1].commit {
			last = len(frames)
		}
	}
	return frames[:last], nil
}

// walPages counts the commits and, by b-tree, the frames of the WAL of the
// SQLite database at path (a copy of it and its "-wal", taken while its
// server ran): each page named by dbstat in a copy of both ("(interior)"
// for a b-tree's inner pages; "free" for a page no b-tree holds any more,
// freed since it was written).
func walPages(ctx context.Context, path string) (commits int, byTree map[string]int, err error) {
	frames, err := readWAL(path + "-wal")
	if err != nil || len(frames) == 0 {
		return 0, nil, err
	}
	dir, err := os.MkdirTemp("", "walpages")
	if err != nil {
		return 0, nil, err
	}
	defer os.RemoveAll(dir)
	for _, suffix := range []string{"", "-wal"} {
		if err := copyFile(path+suffix, filepath.Join(dir, "x.db"+suffix)); err != nil {
			return 0, nil, err
		}
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "x.db"))
	if err != nil {
		return 0, nil, err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT name, pageno, pagetype FROM dbstat`)
	if err != nil {
		return 0, nil, err
	}
	names := map[uint32]string{}
	for rows.Next() {
		var name, kind string
		var page uint32
		if err := rows.Scan(&name, &page, &kind); err != nil {
			rows.Close()
			return 0, nil, err
		}
		if kind != "leaf" {
			name += " (interior)"
		}
		names[page] = name
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, nil, err
	}
	names[1] = "page 1 (header, " + names[1] + ")"
	byTree = map[string]int{}
	for _, f := range frames {
		name, ok := names[f.page]
		if !ok {
			name = "free"
		}
		byTree[name]++
		if f.commit {
			commits++
		}
	}
	return commits, byTree, nil
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		_ = dst.Close()
		return err
	}
	return dst.Close()
}

// readWAL finds the commits and frames the writer counted, and walPages
// names the pages of the b-trees the writes touched.
func TestWALPagesCountsTheWritersCommitsAndFrames(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "t.db")
	db, err := Open(ctx, path)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	_, err = db.Exec(ctx, `CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID`)
	require.NoError(t, err)
	_, err = db.Exec(ctx, `CREATE TABLE log (n INTEGER PRIMARY KEY, k TEXT NOT NULL)`)
	require.NoError(t, err)
	_, err = db.Exec(ctx, `CREATE INDEX log_k ON log (k)`)
	require.NoError(t, err)
	commits0 := testutil.ToFloat64(db.metrics.commits)
	frames0 := db.metrics.frames.Load()
	walFrames0, err := readWAL(path + "-wal")
	require.NoError(t, err)
	for i := range 20 {
		require.NoError(t, db.Write(ctx, func(tx *Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO kv (k, v) VALUES (?, ?)`, fmt.Sprint("k", i), strings.Repeat("v", 200)); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO log (k) VALUES (?)`, fmt.Sprint("k", i))
			return err
		}))
	}
	frames, err := readWAL(path + "-wal")
	require.NoError(t, err)
	commits := 0
	for _, f := range frames[len(walFrames0):] {
		if f.commit {
			commits++
		}
	}
	require.Equal(t, 20, commits)
	require.EqualValues(t, testutil.ToFloat64(db.metrics.commits)-commits0, commits)
	require.EqualValues(t, db.metrics.frames.Load()-frames0, len(frames)-len(walFrames0))

	n, byTree, err := walPages(ctx, path)
	require.NoError(t, err)
	require.Equal(t, len(frames), sumOf(byTree))
	require.Equal(t, n, commits+countCommits(walFrames0))
	// A page of each b-tree per commit (named as the page is now: kv's first
	// page became its interior page when it split).
	for _, tree := range []string{"kv", "log", "log_k"} {
		require.GreaterOrEqual(t, byTree[tree]+byTree[tree+" (interior)"], 20, "%s: %v", tree, byTree)
	}
	require.Zero(t, byTree["free"], "no page freed")
}

func sumOf(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func countCommits(fs []walFrame) int {
	n := 0
	for _, f := range fs {
		if f.commit {
			n++
		}
	}
	return n
}

// TestWALPages is a measuring tool (BENCHMARKS.md, wal16): with WALPAGES
// set to directories (':'-separated) of copies of SQLite databases and their
// "-wal" files taken while a server ran, it logs for each database the
// commits in the copied WALs and the frames per commit by b-tree. Without
// it, it checks walPages on an empty directory.
//
//	WALPAGES=/tmp/s1:/tmp/s2 go test ./services/platform/sqldb -run '^TestWALPages$' -v
func TestWALPages(t *testing.T) {
	dirs := strings.Split(os.Getenv("WALPAGES"), ":")
	if dirs[0] == "" {
		dirs = []string{t.TempDir()}
	}
	commits, frames := map[string]int{}, map[string]map[string]int{}
	for _, dir := range dirs {
		wals, err := filepath.Glob(filepath.Join(dir, "*.db-wal"))
		require.NoError(t, err)
		for _, wal := range wals {
			path := strings.TrimSuffix(wal, "-wal")
			n, byTree, err := walPages(context.Background(), path)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			require.NoError(t, err)
			db := filepath.Base(path)
			commits[db] += n
			if frames[db] == nil {
				frames[db] = map[string]int{}
			}
			for tree, k := range byTree {
				frames[db][tree] += k
			}
		}
	}
	for db, n := range commits {
		if n == 0 {
			continue
		}
		trees := make([]string, 0, len(frames[db]))
		for tree := range frames[db] {
			trees = append(trees, tree)
		}
		sort.Slice(trees, func(i, j int) bool { return frames[db][trees[i]] > frames[db][trees[j]] })
		var b strings.Builder
		fmt.Fprintf(&b, "%s: %d commits, %.2f frames per commit", db, n, float64(sumOf(frames[db]))/float64(n))
		for _, tree := range trees {
			fmt.Fprintf(&b, "\n  %6.2f %s", float64(frames[db][tree])/float64(n), tree)
		}
		t.Log(b.String())
	}
	if os.Getenv("WALPAGES") == "" {
		require.Empty(t, commits)
	}
}
