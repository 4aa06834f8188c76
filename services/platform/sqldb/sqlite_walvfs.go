package sqldb

import (
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"modernc.org/libc"
	"modernc.org/libc/sys/types"
	sqlite3 "modernc.org/sqlite/lib"
)

// The WAL's frames in one write per commit.
//
// SQLite writes each WAL frame with two writes, its 24-byte header and then
// its page, each a pwrite64 system call: a commit of 12 frames is 24
// pwrite64s before its fsync, and on this kind of machine a system call is
// dear (BENCHMARKS.md, wal19). walVFS is SQLite's "unix-excl" VFS (see
// openSQLite) with one change: a WAL file's appended frames are gathered in
// a buffer and written with one write when the frame that ends a commit is
// in, so a commit costs one pwrite64 and its fsync.
//
// What reaches the file, and in what order, is what SQLite wrote; only when
// is changed, and never past a point where anything could tell:
//   - only appends are held: a frame's header written at or past the end of
//     what the handle has written (or the WAL header at offset 0, which
//     starts a new WAL), and the page right after a held header. Any other
//     write (a page overwritten within its transaction, the checksums
//     rewritten at its commit) first writes what is held, then goes through;
//   - the page of a frame whose header marks a commit (its "database size
//     after commit" field is not 0) is written with everything held before
//     its write returns: SQLite syncs (synchronous=FULL) and publishes the
//     commit to the other connections' wal-index only after that write;
//   - every other call on the file (a read, a sync, its size, a truncate,
//     a file control, a lock, close) first writes what is held, so the
//     connection never reads its own WAL stale either;
//   - a write error surfaces at the write that writes the buffer (the
//     commit's last frame, or the call that flushed): SQLite then fails the
//     commit as if that frame's write had failed, and the frames before it
//     were never part of a commit (no commit frame follows them).
//
// The database file, the other journals and every other VFS call are
// unix-excl's own, unchanged: the shim wraps only files opened with
// SQLITE_OPEN_WAL.
const walVFSName = "clinicchat-wal"

// walFile is the head of a WAL file opened through walVFS; the unix-excl
// file follows it in the same allocation (SQLite allocates szOsFile bytes).
type walFile struct {
	methods uintptr // sqlite3_file.pMethods: &walMethods
	buf     uintptr // the held bytes (C memory, grown as needed)
	cap     int64
	n       int64 // bytes held
	start   int64 // file offset of buf[0]
	end     int64 // end of the highest write through this handle (the append point)
	header  int32 // a frame header is held and its page expected: 1, or 2 if it ends a commit
	db      int32 // the database's walSyncs entry (1-based; 0: none), found at open
}

const walFileSize = int64(unsafe.Sizeof(walFile{}))

// walMaxHeld: a commit larger than this is written in several writes (one
// per ~23 frames instead of two per frame). It bounds the C memory each
// writer's WAL handle keeps (the buffer is at most 128 KiB): at 1 MiB the
// writers' buffers, grown by large batches, held 8-9 MiB more RSS for no
// CPU the runs could show (BENCHMARKS.md, the Dec 2 ninth-session top
// section). walMaxWrite: unix-excl's write (seekAndWrite) takes the size
// modulo 128 KiB, so what is held goes in writes below that.
const (
	walMaxHeld  = 96 << 10
	walMaxWrite = 96 << 10
)

// walWrites counts the writes walVFS made to WAL files (the tests' count
// of pwrite64s per commit).
var walWrites atomic.Uint64

var (
	walVFSOnce sync.Once
	walVFSOK   bool
	walBase    uintptr // the unix-excl sqlite3_vfs
	walMethods uintptr // the shim's sqlite3_io_methods
)

// registerWALVFS registers walVFS once per process and reports whether it
// can be used (openSQLite falls back to unix-excl if not).
func registerWALVFS() bool {
	walVFSOnce.Do(func() {
		tls := libc.NewTLS()
		defer tls.Close()
		name, err := libc.CString("unix-excl")
		if err != nil {
			return
		}
		defer libc.Xfree(tls, name)
		base := sqlite3.Xsqlite3_vfs_find(tls, name)
		if base == 0 {
			return
		}
		bv := (*sqlite3.Tsqlite3_vfs)(ptr(base))
		mine, err := libc.CString(walVFSName)
		if err != nil {
			return
		}
		vfs := libc.Xcalloc(tls, 1, types.Size_t(unsafe.Sizeof(sqlite3.Tsqlite3_vfs{})))
		m := libc.Xcalloc(tls, 1, types.Size_t(unsafe.Sizeof(sqlite3.Tsqlite3_io_methods{})))
		if vfs == 0 || m == 0 {
			return
		}
		v := (*sqlite3.Tsqlite3_vfs)(ptr(vfs))
		*v = *bv
		v.FpNext = 0
		v.FzName = mine
		v.FszOsFile = bv.FszOsFile + int32(walFileSize)
		v.FxOpen = cfunc(walOpen)
		mt := (*sqlite3.Tsqlite3_io_methods)(ptr(m))
		*mt = sqlite3.Tsqlite3_io_methods{
			FiVersion:               3,
			FxClose:                 cfunc(walClose),
			FxRead:                  cfunc(walRead),
			FxWrite:                 cfunc(walWrite),
			FxTruncate:              cfunc(walTruncate),
			FxSync:                  cfunc(walSync),
			FxFileSize:              cfunc(walFileSizeOf),
			FxLock:                  cfunc(walLock),
			FxUnlock:                cfunc(walUnlock),
			FxCheckReservedLock:     cfunc(walCheckReservedLock),
			FxFileControl:           cfunc(walFileControl),
			FxSectorSize:            cfunc(walSectorSize),
			FxDeviceCharacteristics: cfunc(walDeviceCharacteristics),
			FxShmMap:                cfunc(walShmMap),
			FxShmLock:               cfunc(walShmLock),
			FxShmBarrier:            cfunc(walShmBarrier),
			FxShmUnmap:              cfunc(walShmUnmap),
			FxFetch:                 cfunc(walFetch),
			FxUnfetch:               cfunc(walUnfetch),
		}
		walBase, walMethods = base, m
		if sqlite3.Xsqlite3_vfs_register(tls, vfs, 0) != sqlite3.SQLITE_OK {
			return
		}
		walVFSOK = true
	})
	return walVFSOK
}

// ptr turns an address in C memory into a pointer (the form go vet
// accepts; the memory is not Go's and never moves).
func ptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

// cfunc is the C function pointer of a top-level Go function, as
// modernc.org/sqlite's transpiled code calls them (modernc's cFuncPointer).
func cfunc[T any](f T) uintptr { return *(*uintptr)(unsafe.Pointer(&struct{ f T }{f})) }

// as is the Go function a C function pointer holds.
func as[T any](fp uintptr) T { return *(*T)(unsafe.Pointer(&struct{ uintptr }{fp})) }

func walOf(p uintptr) *walFile { return (*walFile)(ptr(p)) }

// inner is the unix-excl file after the shim's head, and its methods.
func inner(p uintptr) (uintptr, *sqlite3.Tsqlite3_io_methods) {
	r := p + uintptr(walFileSize)
	return r, (*sqlite3.Tsqlite3_io_methods)(ptr((*sqlite3.Tsqlite3_file)(ptr(r)).FpMethods))
}

type (
	xOpenFn  = func(*libc.TLS, uintptr, uintptr, uintptr, int32, uintptr) int32
	xFileFn  = func(*libc.TLS, uintptr) int32
	xRWFn    = func(*libc.TLS, uintptr, uintptr, int32, int64) int32
	xIntFn   = func(*libc.TLS, uintptr, int32) int32
	xPtrFn   = func(*libc.TLS, uintptr, uintptr) int32
	xTruncFn = func(*libc.TLS, uintptr, int64) int32
)

func walOpen(tls *libc.TLS, vfs, name, file uintptr, flags int32, outFlags uintptr) int32 {
	open := as[xOpenFn]((*sqlite3.Tsqlite3_vfs)(ptr(walBase)).FxOpen)
	if flags&sqlite3.SQLITE_OPEN_WAL == 0 {
		// Not a WAL: unix-excl's own file, at the start of the allocation.
		return open(tls, walBase, name, file, flags, outFlags)
	}
	f := walOf(file)
	*f = walFile{}
	rc := open(tls, walBase, name, file+uintptr(walFileSize), flags, outFlags)
	if rc == sqlite3.SQLITE_OK {
		f.methods = walMethods
		if name != 0 {
			f.db = walSyncIndex(libc.GoString(name))
		}
	}
	return rc
}

// flush writes what the handle holds.
func walFlush(tls *libc.TLS, file uintptr) int32 {
	f := walOf(file)
	if f.n == 0 {
		f.header = 0
		return sqlite3.SQLITE_OK
	}
	n, start := f.n, f.start
	f.n, f.header = 0, 0
	r, m := inner(file)
	write := as[xRWFn](m.FxWrite)
	for done := int64(0); done < n; done += walMaxWrite {
		walWrites.Add(1)
		if rc := write(tls, r, f.buf+uintptr(done), int32(min(n-done, walMaxWrite)), start+done); rc != sqlite3.SQLITE_OK {
			return rc
		}
	}
	return sqlite3.SQLITE_OK
}

// hold appends amt bytes at buf to what the handle holds.
func walHold(tls *libc.TLS, f *walFile, buf uintptr, amt int32, off int64) bool {
	if f.n == 0 {
		f.start = off
	}
	if need := f.n + int64(amt); need > f.cap {
		c := max(need, 2*f.cap, 64<<10)
		nb := libc.Xrealloc(tls, f.buf, types.Size_t(c))
		if nb == 0 {
			return false
		}
		f.buf, f.cap = nb, c
	}
	copy(unsafe.Slice((*byte)(ptr(f.buf+uintptr(f.n))), amt), unsafe.Slice((*byte)(ptr(buf)), amt))
	f.n += int64(amt)
	f.end = max(f.end, off+int64(amt))
	return true
}

func walWrite(tls *libc.TLS, file, buf uintptr, amt int32, off int64) int32 {
	f := walOf(file)
	held := f.start + f.n // where the next held byte goes
	switch {
	case f.header != 0 && f.n > 0 && off == held && amt > 24 && f.n+int64(amt) <= walMaxHeld:
		// The page of the held header.
		commit := f.header == 2
		f.header = 0
		if !walHold(tls, f, buf, amt, off) {
			break
		}
		if commit {
			return walFlush(tls, file)
		}
		return sqlite3.SQLITE_OK
	case amt == 32 && off == 0, amt == 24 && off >= f.end:
		// The WAL's header (a new WAL), or a frame's header appended.
		if f.n > 0 && (off != held || f.n+int64(amt) > walMaxHeld || f.header != 0) {
			if rc := walFlush(tls, file); rc != sqlite3.SQLITE_OK {
				return rc
			}
		}
		if off == 0 {
			f.end = 0
		}
		if !walHold(tls, f, buf, amt, off) {
			break
		}
		if amt == 24 {
			f.header = 1
			if *(*uint32)(ptr(buf + 4)) != 0 { // the database size after commit: a commit frame
				f.header = 2
			}
		}
		return sqlite3.SQLITE_OK
	}
	if rc := walFlush(tls, file); rc != sqlite3.SQLITE_OK {
		return rc
	}
	f.end = max(f.end, off+int64(amt))
	walWrites.Add(1)
	r, m := inner(file)
	return as[xRWFn](m.FxWrite)(tls, r, buf, amt, off)
}

func walClose(tls *libc.TLS, file uintptr) int32 {
	rc := walFlush(tls, file)
	f := walOf(file)
	if f.buf != 0 {
		libc.Xfree(tls, f.buf)
		f.buf, f.cap = 0, 0
	}
	r, m := inner(file)
	if rc2 := as[xFileFn](m.FxClose)(tls, r); rc == sqlite3.SQLITE_OK {
		rc = rc2
	}
	return rc
}

func walRead(tls *libc.TLS, file, buf uintptr, amt int32, off int64) int32 {
	if rc := walFlush(tls, file); rc != sqlite3.SQLITE_OK {
		return rc
	}
	r, m := inner(file)
	return as[xRWFn](m.FxRead)(tls, r, buf, amt, off)
}

func walTruncate(tls *libc.TLS, file uintptr, size int64) int32 {
	if rc := walFlush(tls, file); rc != sqlite3.SQLITE_OK {
		return rc
	}
	f := walOf(file)
	f.end = min(f.end, size)
	r, m := inner(file)
	return as[xTruncFn](m.FxTruncate)(tls, r, size)
}

func walSync(tls *libc.TLS, file uintptr, flags int32) int32 {
	if rc := walFlush(tls, file); rc != sqlite3.SQLITE_OK {
		return rc
	}
	r, m := inner(file)
	h := walSyncHistogram(walOf(file).db)
	if h == nil {
		return as[xIntFn](m.FxSync)(tls, r, flags)
	}
	start := time.Now()
	rc := as[xIntFn](m.FxSync)(tls, r, flags)
	h.Observe(time.Since(start).Seconds())
	return rc
}

func walFileSizeOf(tls *libc.TLS, file, size uintptr) int32 {
	if rc := walFlush(tls, file); rc != sqlite3.SQLITE_OK {
		return rc
	}
	r, m := inner(file)
	return as[xPtrFn](m.FxFileSize)(tls, r, size)
}

func walLock(tls *libc.TLS, file uintptr, lock int32) int32 {
	if rc := walFlush(tls, file); rc != sqlite3.SQLITE_OK {
		return rc
	}
	r, m := inner(file)
	return as[xIntFn](m.FxLock)(tls, r, lock)
}

func walUnlock(tls *libc.TLS, file uintptr, lock int32) int32 {
	if rc := walFlush(tls, file); rc != sqlite3.SQLITE_OK {
		return rc
	}
	r, m := inner(file)
	return as[xIntFn](m.FxUnlock)(tls, r, lock)
}

func walCheckReservedLock(tls *libc.TLS, file, out uintptr) int32 {
	if rc := walFlush(tls, file); rc != sqlite3.SQLITE_OK {
		return rc
	}
	r, m := inner(file)
	return as[xPtrFn](m.FxCheckReservedLock)(tls, r, out)
}

func walFileControl(tls *libc.TLS, file uintptr, op int32, arg uintptr) int32 {
	if rc := walFlush(tls, file); rc != sqlite3.SQLITE_OK {
		return rc
	}
	r, m := inner(file)
	return as[func(*libc.TLS, uintptr, int32, uintptr) int32](m.FxFileControl)(tls, r, op, arg)
}

// The sector size and the device's characteristics are properties, asked
// between a commit's frames: nothing is flushed for them.
func walSectorSize(tls *libc.TLS, file uintptr) int32 {
	r, m := inner(file)
	return as[xFileFn](m.FxSectorSize)(tls, r)
}

func walDeviceCharacteristics(tls *libc.TLS, file uintptr) int32 {
	r, m := inner(file)
	return as[xFileFn](m.FxDeviceCharacteristics)(tls, r)
}

// SQLite maps the wal-index through the database file, never the WAL; these
// forward for completeness.
func walShmMap(tls *libc.TLS, file uintptr, pg, size, extend int32, pp uintptr) int32 {
	if rc := walFlush(tls, file); rc != sqlite3.SQLITE_OK {
		return rc
	}
	r, m := inner(file)
	return as[func(*libc.TLS, uintptr, int32, int32, int32, uintptr) int32](m.FxShmMap)(tls, r, pg, size, extend, pp)
}

func walShmLock(tls *libc.TLS, file uintptr, off, n, flags int32) int32 {
	if rc := walFlush(tls, file); rc != sqlite3.SQLITE_OK {
		return rc
	}
	r, m := inner(file)
	return as[func(*libc.TLS, uintptr, int32, int32, int32) int32](m.FxShmLock)(tls, r, off, n, flags)
}

func walShmBarrier(tls *libc.TLS, file uintptr) {
	_ = walFlush(tls, file)
	r, m := inner(file)
	as[func(*libc.TLS, uintptr)](m.FxShmBarrier)(tls, r)
}

func walShmUnmap(tls *libc.TLS, file uintptr, del int32) int32 {
	if rc := walFlush(tls, file); rc != sqlite3.SQLITE_OK {
		return rc
	}
	r, m := inner(file)
	return as[xIntFn](m.FxShmUnmap)(tls, r, del)
}

func walFetch(tls *libc.TLS, file uintptr, off int64, amt int32, pp uintptr) int32 {
	if rc := walFlush(tls, file); rc != sqlite3.SQLITE_OK {
		return rc
	}
	r, m := inner(file)
	return as[func(*libc.TLS, uintptr, int64, int32, uintptr) int32](m.FxFetch)(tls, r, off, amt, pp)
}

func walUnfetch(tls *libc.TLS, file uintptr, off int64, p uintptr) int32 {
	r, m := inner(file)
	return as[func(*libc.TLS, uintptr, int64, uintptr) int32](m.FxUnfetch)(tls, r, off, p)
}
