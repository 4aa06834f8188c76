package sqldb

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
)

// smallCheckpoints makes the checkpointer's thresholds small, for the
// test's life.
func smallCheckpoints(t testing.TB, every, restart int64) {
	c, r := checkpointFrames, restartFrames
	checkpointFrames, restartFrames = every, restart
	t.Cleanup(func() { checkpointFrames, restartFrames = c, r })
}

// openBlobs opens a SQLite database at path with a table of random keys and
// 1 KiB values (each write dirties pages all over its index).
func openBlobs(t testing.TB, path string) *DB {
	ctx := context.Background()
	db, err := Open(ctx, path)
	require.NoError(t, err)
	_, err = db.Exec(ctx, `CREATE TABLE IF NOT EXISTS blobs (k TEXT PRIMARY KEY, v BLOB NOT NULL)`)
	require.NoError(t, err)
	return db
}

func randomKey() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func insertBlob(k string) func(tx *Tx) error {
	return func(tx *Tx) error {
		_, err := tx.Exec(context.Background(), `INSERT INTO blobs (k, v) VALUES (?, zeroblob(1024))`, k)
		return err
	}
}

func counterBy(t testing.TB, db *DB, by string) float64 {
	return testutil.ToFloat64(db.metrics.checkpoints.WithLabelValues(by))
}

// Under continuous writes from 8 goroutines the WAL stays bounded: the
// checkpointer checkpoints beside the writer, the writer finishes the last
// frames between batches, and the WAL starts again from its beginning. The
// writes wrote far more frames than the bound (without the writer's part
// the WAL would hold all of them).
func TestCheckpointerKeepsWALBounded(t *testing.T) {
	smallCheckpoints(t, 50, 200)
	path := filepath.Join(t.TempDir(), "wal.db")
	db := openBlobs(t, path)
	defer db.Close()
	frames0 := db.metrics.frames.Load()

	var (
		wg     sync.WaitGroup
		maxWAL atomic.Int64
	)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 600; i++ {
				if err := db.Write(context.Background(), insertBlob(randomKey())); err != nil {
					t.Error(err)
					return
				}
				if fi, err := os.Stat(path + "-wal"); err == nil {
					for m := maxWAL.Load(); fi.Size() > m && !maxWAL.CompareAndSwap(m, fi.Size()); m = maxWAL.Load() {
					}
				}
			}
		}()
	}
	wg.Wait()

	const frame = 4096 + 24 // page size and frame header
	written := int64(db.metrics.frames.Load() - frames0)
	bound := 8 * restartFrames * frame // room for a slow checkpoint on a busy machine
	t.Logf("frames written %d; WAL at most %d frames; checkpoints: %v by the checkpointer, %v by the writer",
		written, maxWAL.Load()/frame, counterBy(t, db, "checkpointer"), counterBy(t, db, "writer"))
	require.Greater(t, written*frame, 2*bound, "the writes wrote far more than the bound")
	require.LessOrEqual(t, maxWAL.Load(), bound, "the WAL started again")
	require.Positive(t, counterBy(t, db, "checkpointer"))
	require.Positive(t, counterBy(t, db, "writer"))
	require.Zero(t, testutil.ToFloat64(db.metrics.checkpointErrors))
}

// Close stops the checkpointer and closes its connection; a commit
// reported after Close does not block.
func TestCloseStopsCheckpointer(t *testing.T) {
	smallCheckpoints(t, 1, 1_000_000)
	db := openBlobs(t, filepath.Join(t.TempDir(), "close.db"))
	require.NoError(t, db.Write(context.Background(), insertBlob(randomKey())))
	require.Eventually(t, func() bool { return counterBy(t, db, "checkpointer") > 0 }, 10*time.Second, time.Millisecond,
		"a commit past the threshold wakes the checkpointer")
	ck := db.ckpt
	require.NoError(t, db.Close())
	require.Zero(t, ck.pool.Stats().OpenConnections, "the checkpointer's connection is closed")
	require.ErrorIs(t, ck.conn.PingContext(context.Background()), sql.ErrConnDone)
	for i := 0; i < 3; i++ {
		ck.committed(10) // the kick's buffer is full after the first: no goroutine takes it
	}
}

// Without the checkpointer (backgroundCheckpoints false), the writer keeps
// SQLite's own checkpoints in the COMMIT; with it, the writer's connection
// has wal_autocheckpoint=0.
func TestWriterRunsNoAutoCheckpoint(t *testing.T) {
	for _, bg := range []bool{true, false} {
		prev := backgroundCheckpoints
		backgroundCheckpoints = bg
		db := openBlobs(t, filepath.Join(t.TempDir(), "auto.db"))
		backgroundCheckpoints = prev
		var n int
		require.NoError(t, db.w.conn.QueryRowContext(context.Background(), "PRAGMA wal_autocheckpoint").Scan(&n))
		if bg {
			require.Zero(t, n)
			require.NotNil(t, db.ckpt)
		} else {
			require.Equal(t, 1000, n)
			require.Nil(t, db.ckpt)
		}
		require.NoError(t, db.Close())
	}
}

// A process killed (SIGKILL) while it writes from 8 goroutines, with the
// checkpointer copying the WAL and the WAL starting again all the while,
// keeps every row whose Write had returned: the helper process prints each
// key once its Write returns, the test kills it and opens the database.
func TestCheckpointerCrashKeepsCommittedRows(t *testing.T) {
	if dir := os.Getenv("SQLDB_CRASH_DIR"); dir != "" {
		crashWriter(t, dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCheckpointerCrashKeepsCommittedRows$")
	cmd.Env = append(os.Environ(), "SQLDB_CRASH_DIR="+dir)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	var keys []string
	restarts := 0
	sc := bufio.NewScanner(out)
	for sc.Scan() && (len(keys) < 3000 || restarts < 3) {
		line := sc.Text()
		if n, ok := parseRestarts(line); ok {
			restarts = n
			continue
		}
		if len(line) == 24 {
			keys = append(keys, line)
		}
	}
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	require.GreaterOrEqual(t, len(keys), 3000, "the helper wrote")
	require.GreaterOrEqual(t, restarts, 3, "the writer finished checkpoints (and the WAL started again) while it wrote")

	db := openBlobs(t, filepath.Join(dir, "crash.db"))
	defer db.Close()
	have := map[string]bool{}
	rows, err := db.Query(context.Background(), `SELECT k FROM blobs`)
	require.NoError(t, err)
	for rows.Next() {
		var k string
		require.NoError(t, rows.Scan(&k))
		have[k] = true
	}
	require.NoError(t, rows.Err())
	missing := 0
	for _, k := range keys {
		if !have[k] {
			missing++
		}
	}
	require.Zero(t, missing, "of %d committed rows (%d in the database)", len(keys), len(have))
	var ok string
	require.NoError(t, db.QueryRow(context.Background(), `PRAGMA integrity_check`).Scan(&ok))
	require.Equal(t, "ok", ok)
}

func parseRestarts(line string) (int, bool) {
	var n int
	if _, err := fmt.Sscanf(line, "writer-checkpoints %d", &n); err != nil {
		return 0, false
	}
	return n, true
}

// crashWriter is the helper process: it writes until it is killed.
func crashWriter(t *testing.T, dir string) {
	smallCheckpoints(t, 50, 200)
	db := openBlobs(t, filepath.Join(dir, "crash.db"))
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := randomKey()
				if err := db.Write(context.Background(), insertBlob(k)); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				fmt.Fprintln(w, k)
				fmt.Fprintf(w, "writer-checkpoints %d\n", int(counterBy(t, db, "writer")))
				_ = w.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// BenchmarkCheckpointInCommit compares SQLite's own checkpoints, in the
// COMMIT of the one writer (wal_autocheckpoint=1000), with the checkpointer:
// 8 goroutines write a send's shape (4 rows, two tables, each with an
// index) as fast as they can; it reports each Write's latency p50/p99/p999
// and max, and the commits' time p99 from the writer's histogram.
//
//	go test ./services/platform/sqldb -run '^$' -bench CheckpointInCommit -benchtime 6000x -count 3
func BenchmarkCheckpointInCommit(b *testing.B) {
	for _, mode := range []string{"autocheckpoint", "checkpointer", "checkpointer", "autocheckpoint"} {
		b.Run(mode, func(b *testing.B) {
			prev := backgroundCheckpoints
			backgroundCheckpoints = mode == "checkpointer"
			db := openBlobs(b, filepath.Join(b.TempDir(), "bench.db"))
			backgroundCheckpoints = prev
			defer db.Close()
			ctx := context.Background()
			_, err := db.Exec(ctx, `CREATE TABLE IF NOT EXISTS msgs (thread TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (thread, seq))`)
			require.NoError(b, err)
			var (
				next atomic.Int64
				mu   sync.Mutex
				lat  = make([]time.Duration, 0, b.N)
				wg   sync.WaitGroup
			)
			body := string(make([]byte, 300))
			b.ResetTimer()
			for g := 0; g < 8; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						start := time.Now()
						err := db.Write(ctx, func(tx *Tx) error {
							for j := 0; j < 2; j++ {
								if _, err := tx.Exec(ctx, `INSERT INTO msgs (thread, seq, body) VALUES (?, ?, ?)`, randomKey(), i, body); err != nil {
									return err
								}
							}
							return insertBlob(strconv.FormatInt(i, 10) + randomKey())(tx)
						})
						took := time.Since(start)
						if err != nil {
							b.Error(err)
							return
						}
						mu.Lock()
						lat = append(lat, took)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			slices.Sort(lat)
			q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
			b.ReportMetric(q(.5), "p50-ms")
			b.ReportMetric(q(.99), "p99-ms")
			b.ReportMetric(q(.999), "p999-ms")
			b.ReportMetric(q(1), "max-ms")
			b.ReportMetric(histQuantile(b, db.metrics.commit, .99)*1000, "commit-p99-ms")
			b.ReportMetric(histQuantile(b, db.metrics.commit, .999)*1000, "commit-p999-ms")
			b.ReportMetric(float64(testutil.ToFloat64(db.metrics.commits)), "commits")
			b.ReportMetric(float64(db.metrics.frames.Load())/float64(testutil.ToFloat64(db.metrics.commits)), "frames/commit")
			b.ReportMetric(counterBy(b, db, "checkpointer"), "bg-checkpoints")
			b.ReportMetric(counterBy(b, db, "writer"), "writer-checkpoints")
			if db.ckpt != nil {
				for _, by := range []string{"checkpointer", "writer"} {
					h := db.metrics.checkpointTime.WithLabelValues(by).(interface{ Write(*dto.Metric) error })
					b.ReportMetric(histQuantile(b, h, .5)*1000, by+"-ckpt-p50-ms")
					b.ReportMetric(histQuantile(b, h, .99)*1000, by+"-ckpt-p99-ms")
				}
			}
		})
	}
}

// histQuantile interpolates the q-quantile of h within its bucket (seconds).
func histQuantile(t testing.TB, h interface{ Write(*dto.Metric) error }, q float64) float64 {
	var m dto.Metric
	require.NoError(t, h.Write(&m))
	hist := m.GetHistogram()
	want := q * float64(hist.GetSampleCount())
	bs := hist.GetBucket()
	sort.Slice(bs, func(i, j int) bool { return bs[i].GetUpperBound() < bs[j].GetUpperBound() })
	lo, below := 0.0, 0.0
	for _, b := range bs {
		n := float64(b.GetCumulativeCount())
		if n >= want {
			if n == below {
				return b.GetUpperBound()
			}
			return lo + (b.GetUpperBound()-lo)*(want-below)/(n-below)
		}
		lo, below = b.GetUpperBound(), n
	}
	return lo
}

// At the default thresholds the checkpointer starts a checkpoint once the
// writer has committed 2,000 frames since the last one, not before, and the
// WAL starts again at 4,000 (wal19: half as many checkpoints as at 1,000,
// the WAL's size as before).
func TestCheckpointerDefaultInterval(t *testing.T) {
	require.EqualValues(t, 2000, checkpointFrames)
	require.EqualValues(t, 4000, restartFrames)
	ctx := context.Background()
	db := openBlobs(t, filepath.Join(t.TempDir(), "interval.db"))
	t.Cleanup(func() { _ = db.Close() })
	frames0 := db.metrics.frames.Load()
	written := func() int64 { return int64(db.metrics.frames.Load() - frames0) }
	for written() < checkpointFrames-100 {
		require.NoError(t, db.Write(ctx, insertBlob(randomKey())))
	}
	// The kick is sent inside the commit that crosses the threshold: none yet.
	require.Zero(t, counterBy(t, db, "checkpointer"), "%d frames", written())
	for written() < checkpointFrames {
		require.NoError(t, db.Write(ctx, insertBlob(randomKey())))
	}
	require.Eventually(t, func() bool { return counterBy(t, db, "checkpointer") >= 1 }, 30*time.Second, 5*time.Millisecond)
}
