package sqldb

import (
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

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

// walSyncs are the databases' WAL sync histograms, by the WAL's path
// ("…/delivery.db-wal"): a WAL file opened through walVFS finds its
// database's once, at its open (walFile.db, an index into list, which is
// copied on write so that a sync reads it without a lock).
var walSyncs struct {
	sync.Mutex
	byPath map[string]int32 // 1-based index into list
	list   atomic.Pointer[[]prometheus.Observer]
}

// registerWAL records the histogram of the syncs of the WAL of the
// database at path, for the WAL files opened after it; a database reopened
// at the same path takes its entry over.
func registerWAL(path string, h prometheus.Observer) {
	walSyncs.Lock()
	defer walSyncs.Unlock()
	if walSyncs.byPath == nil {
		walSyncs.byPath = map[string]int32{}
	}
	var list []prometheus.Observer
	if p := walSyncs.list.Load(); p != nil {
		list = slices.Clone(*p)
	}
	wal := walPath(path)
	if i, ok := walSyncs.byPath[wal]; ok {
		list[i-1] = h
	} else {
		list = append(list, h)
		walSyncs.byPath[wal] = int32(len(list))
	}
	walSyncs.list.Store(&list)
}

// walSyncIndex is the index (1-based, 0: none) of the WAL file at path, as
// SQLite names it (absolute, symbolic links resolved).
func walSyncIndex(path string) int32 {
	walSyncs.Lock()
	defer walSyncs.Unlock()
	return walSyncs.byPath[path]
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

// walSyncHistogram is the histogram at index i (walSyncIndex), nil for 0.
func walSyncHistogram(i int32) prometheus.Observer {
	if i <= 0 {
		return nil
	}
	p := walSyncs.list.Load()
	if p == nil || int(i) > len(*p) {
		return nil
	}
	return (*p)[i-1]
}
