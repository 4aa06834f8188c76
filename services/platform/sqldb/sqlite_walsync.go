package sqldb

import (
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The WAL syncs of a process's SQLite databases, timed by database.
//
// Every commit of every database fsyncs its WAL (synchronous=FULL), and in
// the all-in-one the five databases share one disk: the slowest 1 % of
// sends spend most of their time in delivery's COMMIT, whose tail is the
// fsync, longer when the other databases' fsyncs run at the same time
// (BENCHMARKS.md, tail24). clinicchat_sqldb_wal_sync_seconds{db} shows
// it. Holding the other databases' syncs (bounded) while delivery's was in
// flight was measured and dropped: send → stream p99 went up, not down
// (BENCHMARKS.md, sync26).

// walDB is what the WAL VFS knows of one database's WAL: how its syncs are
// timed.
type walDB struct {
	sync prometheus.Histogram
}

// walDBs are the databases' WALs by path ("…/delivery.db-wal"); a WAL file
// opened through walVFS finds its entry once, at its open (walFile.db).
var walDBs struct {
	sync.Mutex
	byPath map[string]int32
	list   atomic.Pointer[[]*walDB] // index walFile.db-1
}

// registerWAL records how the WAL of the database at path is synced, for
// the WAL files opened after it (a database reopened at the same path
// takes the entry over).
func registerWAL(path string, db *walDB) {
	walDBs.Lock()
	defer walDBs.Unlock()
	if walDBs.byPath == nil {
		walDBs.byPath = map[string]int32{}
	}
	var list []*walDB
	if p := walDBs.list.Load(); p != nil {
		list = *p
	}
	list = append(list[:len(list):len(list)], db)
	walDBs.list.Store(&list)
	walDBs.byPath[walPath(path)] = int32(len(list))
}

// walDBOf is the index (1-based, 0: none) of the WAL file at path, as
// SQLite names it (absolute, symbolic links resolved).
func walDBOf(path string) int32 {
	walDBs.Lock()
	defer walDBs.Unlock()
	return walDBs.byPath[path]
}

// walPath is the WAL's path of the database at path as SQLite names it.
func walPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	if dir, err := filepath.EvalSymlinks(filepath.Dir(path)); err == nil {
		path = filepath.Join(dir, filepath.Base(path))
	}
	return path + "-wal"
}

func walDBAt(i int32) *walDB {
	if i <= 0 {
		return nil
	}
	p := walDBs.list.Load()
	if p == nil || int(i) > len(*p) {
		return nil
	}
	return (*p)[i-1]
}

// timedSync runs sync, a WAL sync of the database db (nil: not
// registered), and times it.
func timedSync(db *walDB, sync func() int32) int32 {
	if db == nil {
		return sync()
	}
	start := time.Now()
	rc := sync()
	db.sync.Observe(time.Since(start).Seconds())
	return rc
}
