package sqldb

import (
	"errors"
	"expvar"
	"fmt"
	"sync"

	"modernc.org/libc"
	"modernc.org/libc/sys/types"
	sqlite3 "modernc.org/sqlite/lib"
)

// SQLite's page cache in slots of its own size (issue 10; BENCHMARKS.md,
// mem22).
//
// Without it every cached page is one malloc of the page and its headers
// (4,096 + ~300 bytes), and modernc's allocator serves that from its 8 KiB
// size class: a cached page costs 8 KiB of RSS, nearly twice its size.
// sqlite3_config(SQLITE_CONFIG_PAGECACHE) gives SQLite one buffer cut into
// slots of exactly a page and its headers, which pcache1 takes pages from
// first (and from malloc, as before, once they are all in use). The
// buffer is touched whole when SQLite sets it up (it threads its free
// list through every slot), so it is resident from the first open on:
// pageCacheSlots is the page budget of the all-in-one's connections —
// five databases' writers (writerCacheKiB) and checkpointers
// (checkpointerCacheKiB) and a few readers each (readCacheKiB) — which
// share one cache (the comment at writerCacheKiB). Pages are the same
// pages either way: the slots change what a page costs, not which pages
// are kept, nor any read or write.
const (
	pageCachePageSize = 4096
	pageCacheSlots    = 1024
)

// pageCacheSetup is the outcome of setupPageCache, once per process.
var pageCacheSetup struct {
	once sync.Once
	// slot is a slot's size in bytes (0: not set up), err why not.
	slot int
	err  error
}

// setupPageCache gives SQLite its page-cache buffer (see pageCacheSlots).
// It must run before SQLite initializes — the first open, or the first
// VFS lookup (registerWALVFS) — and only once: openSQLite calls it first.
// If SQLite was initialized already (a connection opened without sqldb),
// SQLite refuses it and pages are malloc'd as before.
func setupPageCache() {
	pageCacheSetup.once.Do(func() {
		pageCacheSetup.slot, pageCacheSetup.err = configurePageCache(pageCacheSlots)
	})
}

func configurePageCache(slots int) (int, error) {
	tls := libc.NewTLS()
	defer tls.Close()
	va := libc.Xmalloc(tls, types.Size_t(3*8))
	hdr := libc.Xcalloc(tls, 1, 8)
	if va == 0 || hdr == 0 {
		libc.Xfree(tls, va)
		libc.Xfree(tls, hdr)
		return 0, errors.New("sqlite page cache: out of memory")
	}
	defer libc.Xfree(tls, va)
	defer libc.Xfree(tls, hdr)
	// The bytes pcache1 allocates with each page: its own header, the
	// pager's and the b-tree's.
	if rc := sqlite3.Xsqlite3_config(tls, sqlite3.SQLITE_CONFIG_PCACHE_HDRSZ, libc.VaList(va, hdr)); rc != sqlite3.SQLITE_OK {
		return 0, fmt.Errorf("sqlite page cache: SQLITE_CONFIG_PCACHE_HDRSZ: %d", rc)
	}
	slot := (pageCachePageSize + int(*(*int32)(ptr(hdr))) + 7) &^ 7
	buf := libc.Xmalloc(tls, types.Size_t(slot*slots))
	if buf == 0 {
		return 0, errors.New("sqlite page cache: out of memory")
	}
	if rc := sqlite3.Xsqlite3_config(tls, sqlite3.SQLITE_CONFIG_PAGECACHE, libc.VaList(va, buf, int32(slot), int32(slots))); rc != sqlite3.SQLITE_OK {
		libc.Xfree(tls, buf)
		return 0, fmt.Errorf("sqlite page cache: SQLITE_CONFIG_PAGECACHE: %d (SQLite initialized already)", rc)
	}
	// buf is SQLite's for the life of the process.
	return slot, nil
}

// PageCacheStatus is SQLite's page-cache buffer as sqlite3_status reports
// it: Slot, the size of a slot in bytes (0 when the buffer is not set up);
// Slots, how many; Used, the slots holding a page now, and UsedMax, the
// most at once; Overflow, the bytes of pages malloc'd because no slot was
// free (or the page did not fit one).
type PageCacheStatus struct {
	Slot, Slots, Used, UsedMax, Overflow int
}

// SQLitePageCache reports SQLite's page-cache buffer.
func SQLitePageCache() PageCacheStatus {
	s := PageCacheStatus{Slot: pageCacheSetup.slot}
	if s.Slot > 0 {
		s.Slots = pageCacheSlots
	}
	tls := libc.NewTLS()
	defer tls.Close()
	p := libc.Xcalloc(tls, 2, 8)
	if p == 0 {
		return s
	}
	defer libc.Xfree(tls, p)
	cur, hi := (*int64)(ptr(p)), (*int64)(ptr(p+8))
	if sqlite3.Xsqlite3_status64(tls, sqlite3.SQLITE_STATUS_PAGECACHE_USED, p, p+8, 0) == sqlite3.SQLITE_OK {
		s.Used, s.UsedMax = int(*cur), int(*hi)
	}
	if sqlite3.Xsqlite3_status64(tls, sqlite3.SQLITE_STATUS_PAGECACHE_OVERFLOW, p, p+8, 0) == sqlite3.SQLITE_OK {
		s.Overflow = int(*cur)
	}
	return s
}

// The buffer's figures on the debug listener's /debug/vars.
func init() {
	expvar.Publish("sqlite_pagecache", expvar.Func(func() any { return SQLitePageCache() }))
}
