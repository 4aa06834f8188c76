package sqldb_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// BenchmarkWrite measures one durable write of one small row (and one of
// four rows, the shape of a send: counter, duplicate check, message, outbox
// row) by 1, 8 and 32 goroutines:
//
//   - sqldb: DB.Write (SQLite: group commit, synchronous=FULL; PostgreSQL:
//     a transaction per Write on the pool);
//   - sqlite-tx-per-write: what SQLite does without group commit — the same
//     pragmas and one writer connection, one BEGIN IMMEDIATE … COMMIT (one
//     fsync) per write;
//   - sqlite-normal-tx-per-write: the same with synchronous=NORMAL (no fsync
//     at commit in WAL mode: not durable, shown only as the floor).
//
// cpu-ns/op is the process's CPU time (user and system, every goroutine and
// thread) per write: unlike ns/op it does not grow when other processes
// take the cores.
//
// Run:
//
//	go test ./services/platform/sqldb -run '^$' -bench Write -benchtime 2s
func BenchmarkWrite(b *testing.B) {
	type variant struct {
		name string
		open func(b *testing.B) writer
	}
	variants := []variant{}
	for _, be := range testkit.Backends() {
		variants = append(variants, variant{"sqldb-" + be.Name, func(b *testing.B) writer { return openSQLDB(b, be) }})
	}
	variants = append(variants,
		variant{"sqlite-tx-per-write", func(b *testing.B) writer { return openPlainSQLite(b, "FULL") }},
		variant{"sqlite-normal-tx-per-write", func(b *testing.B) writer { return openPlainSQLite(b, "NORMAL") }})
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			for _, stmts := range []int{1, 4} {
				for _, g := range []int{1, 8, 32} {
					b.Run(fmt.Sprintf("stmts=%d/goroutines=%d", stmts, g), func(b *testing.B) {
						benchWrite(b, v.open(b), stmts, g)
					})
				}
			}
		})
	}
}

// writer is one way to run a durable write of stmts inserts.
type writer interface {
	write(ctx context.Context, key string, stmts int) error
	commits() int64
}

const kvTable = `CREATE TABLE kv (k TEXT NOT NULL, i BIGINT NOT NULL, v TEXT NOT NULL, PRIMARY KEY (k, i))`

type sqldbWriter struct {
	db *sqldb.DB
	n  atomic.Int64
}

func openSQLDB(b *testing.B, be testkit.Backend) writer {
	db := testkit.OpenDB(b, be)
	if _, err := db.Exec(context.Background(), kvTable); err != nil {
		b.Fatal(err)
	}
	w := &sqldbWriter{db: db}
	db.OnCommit(func() { w.n.Add(1) })
	return w
}

func (w *sqldbWriter) write(ctx context.Context, key string, stmts int) error {
	return w.db.Write(ctx, func(tx *sqldb.Tx) error {
		for i := range stmts {
			if _, err := tx.Exec(ctx, `INSERT INTO kv (k, i, v) VALUES (?, ?, ?)`, key, i, "Your crown is ready"); err != nil {
				return err
			}
		}
		return nil
	})
}

func (w *sqldbWriter) commits() int64 { return w.n.Load() }

type plainWriter struct {
	db *sql.DB
	n  atomic.Int64
}

func openPlainSQLite(b *testing.B, synchronous string) writer {
	pragmas := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(" + synchronous + ")", "busy_timeout(10000)"} {
		pragmas.Add("_pragma", p)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(b.TempDir(), "plain.db")+"?"+pragmas.Encode()+"&_txlock=immediate")
	if err != nil {
		b.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	b.Cleanup(func() { _ = db.Close() })
	if _, err := db.Exec(kvTable); err != nil {
		b.Fatal(err)
	}
	return &plainWriter{db: db}
}

func (w *plainWriter) write(ctx context.Context, key string, stmts int) error {
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	for i := range stmts {
		if _, err := tx.ExecContext(ctx, `INSERT INTO kv (k, i, v) VALUES (?, ?, ?)`, key, i, "Your crown is ready"); err != nil {
			_ = tx.Rollback()
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	w.n.Add(1)
	return nil
}

func (w *plainWriter) commits() int64 { return w.n.Load() }

func benchWrite(b *testing.B, w writer, stmts, goroutines int) {
	ctx := context.Background()
	var keys atomic.Int64
	key := func() string { return fmt.Sprintf("k%d", keys.Add(1)) }
	c0 := w.commits()
	cpu0 := processCPU()
	b.ResetTimer()
	if goroutines == 1 {
		for range b.N {
			if err := w.write(ctx, key(), stmts); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		b.SetParallelism(max(1, goroutines/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := w.write(ctx, key(), stmts); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
	if n := w.commits() - c0; n > 0 {
		b.ReportMetric(float64(b.N)/float64(n), "writes/commit")
	}
}

// BenchmarkReadAfterWrite is a write and then a read of what it wrote, by 1
// and 8 goroutines: the services' shape (a send, then the projection or a
// receipt reads it). Each read after a commit starts a read transaction on
// a newer WAL snapshot.
//
//	go test ./services/platform/sqldb -run '^$' -bench ReadAfterWrite -benchtime 2000x
func BenchmarkReadAfterWrite(b *testing.B) {
	for _, g := range []int{1, 8} {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			ctx := context.Background()
			w := openSQLDB(b, testkit.Backends()[0]).(*sqldbWriter)
			var keys atomic.Int64
			op := func() error {
				k := fmt.Sprintf("k%d", keys.Add(1))
				if err := w.write(ctx, k, 1); err != nil {
					return err
				}
				var v string
				return w.db.QueryRow(ctx, `SELECT v FROM kv WHERE k = ? AND i = 0`, k).Scan(&v)
			}
			cpu0 := processCPU()
			b.ResetTimer()
			b.SetParallelism(max(1, g/runtime.GOMAXPROCS(0)))
			if g == 1 {
				for range b.N {
					if err := op(); err != nil {
						b.Fatal(err)
					}
				}
			} else {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := op(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			b.StopTimer()
			b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// processCPU is the CPU time the process has used, in nanoseconds.
func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
