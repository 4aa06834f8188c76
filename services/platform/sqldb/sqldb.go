// Package sqldb puts SQLite (modernc.org/sqlite, no cgo) and PostgreSQL (pgx)
// behind one handle. Queries are written once with '?' placeholders and
// rebound for PostgreSQL. Writes go through Write, which owns the transaction:
// on SQLite, one writer goroutine group-commits concurrent writes into one
// durable transaction (synchronous=FULL), each write in its own savepoint; on
// PostgreSQL, concurrent writes share a transaction too, each in a savepoint
// of its own (postgres_group.go).
// WriteDeferred is a write that on SQLite waits a little for another write's
// group commit to join instead of starting one.
package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib" // also registers "pgx"
	_ "modernc.org/sqlite"           // registers "sqlite"
)

// Dialect is the SQL flavour behind a DB.
type Dialect int

const (
	SQLite Dialect = iota + 1
	Postgres
)

func (d Dialect) String() string {
	if d == Postgres {
		return "postgres"
	}
	return "sqlite"
}

// Querier is what reads need: a DB or a Tx.
type Querier interface {
	Query(ctx context.Context, q string, args ...any) (*sql.Rows, error)
	QueryRow(ctx context.Context, q string, args ...any) *sql.Row
	Exec(ctx context.Context, q string, args ...any) (sql.Result, error)
	Dialect() Dialect
}

// DB is a service's database.
type DB struct {
	dialect Dialect
	read    *sql.DB
	write   *sql.DB // SQLite: the single writer connection; Postgres: same as read
	jobs    chan *job
	// deferred holds WriteDeferred's jobs (SQLite): they start no batch
	// of their own until their due time.
	deferred chan *job
	stop     chan struct{}
	wg       sync.WaitGroup

	mu       sync.Mutex
	onCommit []func()
	onSignal map[string][]func()
	onHand   map[string][]func(any) // SQLite only

	// SQLite only: prepared statements, so a query is parsed once per
	// connection instead of on every call. readStmts is shared by callers;
	// w (the writer connection and its statements) belongs to the writer
	// goroutine.
	readStmts stmtCache
	w         *sqliteWriter

	// seqs are the counters of Tx.Seqs: the last number taken of each
	// (SQLite only; the writer goroutine's).
	seqs map[string]int64

	metrics *sqliteMetrics // SQLite only
	ckpt    *checkpointer  // SQLite only: WAL checkpoints off the writer (sqlite_checkpoint.go)

	// PostgreSQL: BEGIN goes with a write's first statement (pgTx).
	pipelined bool
	// PostgreSQL: the group commit's lanes take writes from pgJobs
	// (postgres_group.go).
	pgJobs chan *pgJob
	pgStop chan struct{}
	pgWG   sync.WaitGroup
	// pgWaiting counts the writes waiting for a lane (tests).
	pgWaiting atomic.Int32
	// pgAlone counts the writes a lane gave back to run alone (tests).
	pgAlone atomic.Int64
}

// readConns is the size of a SQLite database's read pool.
const readConns = 8

// The page caches of a SQLite database's connections (cache_size, in KiB),
// outside the Go heap (issue 10).
//
// modernc.org/sqlite is built with SQLITE_ENABLE_MEMORY_MANAGEMENT, so
// every connection of every database in the process shares one page cache
// (SQLite's "unified" pcache1 group): a connection allocates pages until it
// holds its cache_size, and then takes the least recently used page of any
// connection, which lets that one allocate again. What bounds the pages
// kept is the sum of every open connection's cache_size, whether or not it
// uses its own, and one connection may end up with most of them: at the
// end of a run the reader of the audit checkpoint's scan held 8.5–8.9 MiB.
// With SQLite's default (2 MiB) for the five writers and the five
// checkpointers and 512 KiB per reader, the all-in-one's bound was ~23 MiB
// as SQLite counts it, and each cached page costs 8 KiB of RSS in modernc's
// allocator (its 4 KiB and the cache's header, in an 8 KiB slot): ~43 MiB
// once a long run has touched enough pages. At 1,000 sends/s the writers
// hit their cache 5–25 times per message and miss it at most ~0.1 times
// with these settings (0.001–0.003 with the defaults: a miss is a pread of
// a page the OS caches), and no write transaction spilled (BENCHMARKS.md,
// mem18). Since mem22 the pages are in slots of their own size
// (sqlite_pagecache.go), ~4.3 KiB of RSS each instead of 8.
//
//   - writerCacheKiB: the writer's: the b-trees' hot pages, and a write
//     transaction's dirty pages (past ~90% of it they spill to the WAL
//     before COMMIT: transactions much larger than the group commits',
//     which stay under ~100 KiB of dirty pages; a spill writes a page to
//     the WAL early, nothing else). 512 KiB (1 MiB until mem21): five
//     writers' 2.5 MiB less of the shared budget, ~5 MiB less RSS once
//     a run has filled it, for ≤ 0.03 more misses per message (mem18,
//     mem21).
//   - checkpointerCacheKiB: the checkpointer's. A checkpoint copies WAL
//     frames to the database file through a buffer of its own, so its
//     cache holds no page; at SQLite's default its 2 MiB were only room
//     for the other connections' pages.
//   - readCacheKiB: each reader's (readConns of them): in WAL mode a read
//     transaction that follows a commit starts with an empty cache, so a
//     reader's pages serve only the transaction that read them.
const (
	writerCacheKiB       = 512
	checkpointerCacheKiB = 64
	readCacheKiB         = 128
)

// maxStmts bounds each statement cache (queries built with a variable
// number of placeholders would otherwise grow it without end).
const maxStmts = 256

// cacheable reports whether q is worth keeping prepared: one DML statement.
func cacheable(q string) bool {
	q = strings.TrimSpace(q)
	if strings.Contains(strings.TrimSuffix(q, ";"), ";") {
		return false
	}
	head := strings.ToUpper(q[:min(len(q), 6)])
	switch head {
	case "SELECT", "INSERT", "UPDATE", "DELETE":
		return true
	}
	// A common table expression ahead of one of them (WITH x AS (…) …):
	// unprepared, it was parsed on every call (conv11: 3× the CPU).
	return len(head) == 6 && strings.HasPrefix(head, "WITH") && strings.ContainsAny(head[4:5], " \t\n")
}

// stmtCache holds statements prepared on a read pool.
type stmtCache struct {
	mu sync.RWMutex
	m  map[string]*sql.Stmt
}

func (c *stmtCache) get(ctx context.Context, pool *sql.DB, q string) *sql.Stmt {
	c.mu.RLock()
	st, ok := c.m[q]
	full := len(c.m) >= maxStmts
	c.mu.RUnlock()
	if ok {
		return st
	}
	if full || !cacheable(q) {
		return nil
	}
	// Prepare without holding the lock: it may wait for a free connection.
	st, err := pool.PrepareContext(ctx, q)
	if err != nil {
		return nil // the caller runs q unprepared and sees the error
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.m[q]; ok {
		_ = st.Close()
		return prev
	}
	if len(c.m) >= maxStmts {
		_ = st.Close()
		return nil
	}
	if c.m == nil {
		c.m = map[string]*sql.Stmt{}
	}
	c.m[q] = st
	return st
}

func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.m {
		_ = st.Close()
	}
	c.m = nil
}

// Open opens dsn: "postgres://…" or "postgresql://…" for PostgreSQL; anything
// else is a SQLite file path, optionally prefixed "sqlite:" or "file:".
func Open(ctx context.Context, dsn string) (*DB, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		return openPostgres(ctx, dsn)
	}
	return openSQLite(ctx, dsn)
}

// DefaultPostgresConns is a process's connections to its PostgreSQL
// database unless the DSN says otherwise (pool_max_conns=N, as pgxpool
// spells it): several processes sharing one server (deploy/local/up) must
// stay under its max_connections together.
const DefaultPostgresConns = 32

func openPostgres(ctx context.Context, dsn string) (*DB, error) {
	dsn, conns, err := poolMaxConns(dsn)
	if err != nil {
		return nil, err
	}
	dsn, lanes, err := groupLanes(dsn)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	pipelined := pipelineBegin(cfg)
	if pipelined {
		cfg.BuildFrontend = buildBeginFrontend
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("connect postgres: %w", err)
	}
	d := &DB{dialect: Postgres, read: db, write: db, pipelined: pipelined}
	d.startLanes(lanes)
	return d, nil
}

func openSQLite(ctx context.Context, dsn string) (*DB, error) {
	path := strings.TrimPrefix(strings.TrimPrefix(dsn, "sqlite:"), "file:")
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	if path == "" {
		return nil, errors.New("open sqlite: empty path")
	}
	// Before anything initializes SQLite (the VFS lookup below does).
	setupPageCache()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	pragmas := url.Values{}
	// temp_store(2): a batch's savepoint journals stay in memory instead of
	// spilling to a temporary file (an open, writes and an unlink per batch).
	for _, p := range []string{"journal_mode(WAL)", "synchronous(FULL)", "busy_timeout(10000)", "foreign_keys(1)", "temp_store(2)"} {
		pragmas.Add("_pragma", p)
	}
	// The "unix-excl" VFS: the first connection takes an exclusive POSIX
	// lock on the database file for the whole process, once, and from then
	// on every lock — the writer's WAL write lock and each reader's read
	// mark, four fcntl calls per transaction with the default "unix" VFS —
	// is taken in memory between this process's connections, and the
	// wal-index (the -shm file) lives in heap memory. Every connection of a
	// database is in this process (the all-in-one's backup too), and a
	// second process opening the same data dir gets "database is locked"
	// instead of sharing it.
	pragmas.Set("vfs", "unix-excl")
	// walVFS (sqlite_walvfs.go): unix-excl, with a commit's WAL frames
	// written in one pwrite64 instead of two per frame.
	if registerWALVFS() {
		pragmas.Set("vfs", walVFSName)
	}
	// Its WAL's syncs timed (sqlite_walsync.go).
	metrics := newSQLiteMetrics(dbName(path))
	registerWAL(path, metrics.walSync)
	// The checkpointer's connection: the same pragmas (synchronous=FULL:
	// a checkpoint fsyncs the WAL, then the database file before the WAL
	// may be written over).
	ckptDSN := "file:" + path + "?" + pragmas.Encode()
	writerDSN := ckptDSN
	if backgroundCheckpoints {
		// The writer's COMMIT runs no checkpoint: the checkpointer does.
		writerDSN += "&" + url.Values{"_pragma": {"wal_autocheckpoint(0)"}}.Encode()
	}
	// The page caches (writerCacheKiB, checkpointerCacheKiB).
	writerDSN += "&" + url.Values{"_pragma": {fmt.Sprintf("cache_size(%d)", -writerCacheKiB)}}.Encode()
	ckptDSN += "&" + url.Values{"_pragma": {fmt.Sprintf("cache_size(%d)", -checkpointerCacheKiB)}}.Encode()
	// The writer runs BEGIN IMMEDIATE itself (sqliteWriter).
	w, err := sql.Open("sqlite", writerDSN)
	if err != nil {
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	if err := w.PingContext(ctx); err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", filepath.Base(path), err)
	}
	pragmas.Add("_pragma", "query_only(1)")
	pragmas.Add("_pragma", fmt.Sprintf("cache_size(%d)", -readCacheKiB))
	r, err := sql.Open("sqlite", "file:"+path+"?"+pragmas.Encode())
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	r.SetMaxOpenConns(readConns)
	r.SetMaxIdleConns(readConns)
	sw, err := newSQLiteWriter(ctx, w)
	if err != nil {
		_ = r.Close()
		_ = w.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", filepath.Base(path), err)
	}
	var ck *checkpointer
	if backgroundCheckpoints {
		cp, err := sql.Open("sqlite", ckptDSN)
		if err == nil {
			ck, err = newCheckpointer(ctx, cp)
			if err != nil {
				_ = cp.Close()
			}
		}
		if err != nil {
			_ = sw.close()
			_ = r.Close()
			_ = w.Close()
			return nil, fmt.Errorf("open sqlite %s: checkpointer: %w", filepath.Base(path), err)
		}
	}
	d := &DB{dialect: SQLite, read: r, write: w, jobs: make(chan *job, 1024), deferred: make(chan *job, 1024), stop: make(chan struct{}),
		w: sw, ckpt: ck, seqs: map[string]int64{}, metrics: metrics}
	registerSQLite(d, dbName(path))
	d.wg.Add(1)
	go d.writer()
	if ck != nil {
		d.wg.Add(1)
		go d.checkpoints()
	}
	return d, nil
}

// Dialect reports the SQL flavour.
func (d *DB) Dialect() Dialect { return d.dialect }

// OnCommit registers f to run after every committed Write (e.g. to wake an
// outbox relay). f must not block.
func (d *DB) OnCommit(f func()) {
	d.mu.Lock()
	d.onCommit = append(d.onCommit, f)
	d.mu.Unlock()
}

// OnSignal registers f to run after every committed Write whose transaction
// called Signal(topic): the outbox relay wakes only for commits that wrote
// outbox rows, not for its own or anybody else's. f must not block.
func (d *DB) OnSignal(topic string, f func()) {
	d.mu.Lock()
	if d.onSignal == nil {
		d.onSignal = map[string][]func(){}
	}
	d.onSignal[topic] = append(d.onSignal[topic], f)
	d.mu.Unlock()
}

// OnHand registers f as the receiver of the values a transaction hands
// over with Tx.Hand(topic, v): f(v) runs once the transaction has
// committed, before the commit's OnCommit and OnSignal hooks, in the order
// of the Hand calls within a transaction; never for a transaction (or a
// job of a group commit) that rolled back, or whose COMMIT had no answer.
// On SQLite it runs on the writer goroutine, in commit order; on
// PostgreSQL on the goroutine that committed (a lane's, or the writer's
// alone), so commits of different lanes may hand over in either order,
// and a write without a pipelined transaction (pgTx) hands nothing over
// (Tx.Handing is false). f must not block.
func (d *DB) OnHand(topic string, f func(v any)) {
	d.mu.Lock()
	if d.onHand == nil {
		d.onHand = map[string][]func(any){}
	}
	d.onHand[topic] = append(d.onHand[topic], f)
	d.mu.Unlock()
}

// handed is a value a transaction hands over after its commit (Tx.Hand).
type handed struct {
	to []func(any)
	v  any
}

func (d *DB) committed(signals []string, hands []handed) {
	for _, h := range hands {
		for _, f := range h.to {
			f(h.v)
		}
	}
	d.mu.Lock()
	fs := d.onCommit
	var sigs []func()
	for _, s := range signals {
		sigs = append(sigs, d.onSignal[s]...)
	}
	d.mu.Unlock()
	for _, f := range fs {
		f()
	}
	for _, f := range sigs {
		f()
	}
}

// Close stops the writer and closes the connections.
func (d *DB) Close() error {
	d.stopLanes()
	if d.stop != nil {
		unregisterSQLite(d)
		close(d.stop)
		d.wg.Wait() // the writer and the checkpointer
		if d.ckpt != nil {
			_ = d.ckpt.close()
		}
		_ = d.w.close()
		d.readStmts.close()
	}
	err := d.read.Close()
	if d.write != d.read {
		err = errors.Join(err, d.write.Close())
	}
	return err
}

// Raw is the underlying pool for reads (tests and migrations only).
func (d *DB) Raw() *sql.DB { return d.read }

// Query runs a read.
func (d *DB) Query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if d.dialect == SQLite {
		if st := d.readStmts.get(ctx, d.read, q); st != nil {
			return st.QueryContext(ctx, args...)
		}
	}
	return d.read.QueryContext(ctx, d.Rebind(q), args...)
}

// QueryRow runs a read of one row.
func (d *DB) QueryRow(ctx context.Context, q string, args ...any) *sql.Row {
	if d.dialect == SQLite {
		if st := d.readStmts.get(ctx, d.read, q); st != nil {
			return st.QueryRowContext(ctx, args...)
		}
	}
	return d.read.QueryRowContext(ctx, d.Rebind(q), args...)
}

// Exec runs a statement outside Write; only for statements that need no
// group commit (maintenance). On SQLite it goes through the writer.
func (d *DB) Exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	var res sql.Result
	err := d.Write(ctx, func(tx *Tx) error {
		var err error
		res, err = tx.Exec(ctx, q, args...)
		return err
	})
	return res, err
}

// Rebind turns '?' placeholders into '$n' for PostgreSQL.
func (d *DB) Rebind(q string) string { return rebind(d.dialect, q) }

// rebound caches rebind's PostgreSQL text of each statement (the callers'
// statements are constants, or built from a few row counts): a statement
// was rewritten, a builder and a number formatted per placeholder, every
// time it ran — an outbox INSERT per event written. Up to maxRebound
// statements; others are rewritten each time.
var rebound struct {
	mu sync.RWMutex
	m  map[string]string
}

const maxRebound = 1024

func rebind(d Dialect, q string) string {
	if d != Postgres || !strings.Contains(q, "?") {
		return q
	}
	rebound.mu.RLock()
	r, ok := rebound.m[q]
	rebound.mu.RUnlock()
	if ok {
		return r
	}
	r = rewritePlaceholders(q)
	rebound.mu.Lock()
	if rebound.m == nil {
		rebound.m = map[string]string{}
	}
	if len(rebound.m) < maxRebound {
		rebound.m[q] = r
	}
	rebound.mu.Unlock()
	return r
}

// rewritePlaceholders is q with its '?' placeholders (outside quotes) as
// $1, $2…
func rewritePlaceholders(q string) string {
	var b strings.Builder
	b.Grow(len(q) + 8)
	n := 0
	inQuote := false
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'':
			inQuote = !inQuote
			b.WriteByte(c)
		case c == '?' && !inQuote:
			n++
			fmt.Fprintf(&b, "$%d", n)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// Tx is a write transaction (on SQLite, a savepoint inside a group commit).
type Tx struct {
	tx *sql.Tx // PostgreSQL, BEGIN on its own
	pg *pgTx   // PostgreSQL, BEGIN with the first statement
	// batch is the context of the transaction a joined write of a group
	// commit runs in (PostgreSQL): its statements live by it, not by
	// their caller's.
	batch   context.Context
	dialect Dialect
	db      *DB       // SQLite: the writer's connection and statements
	signals []string  // topics to signal after the commit
	hands   []handed  // values to hand over after the commit
	seqUndo []seqUndo // the counters' changes, to undo on a rollback (SQLite, Seqs)
}

// Handing reports whether Hand(topic, …) reaches a receiver (DB.OnHand):
// a caller need not build a value nobody takes.
func (t *Tx) Handing(topic string) bool {
	return t.receivers(topic) != nil
}

func (t *Tx) receivers(topic string) []func(any) {
	d := t.db
	if d == nil && t.pg != nil {
		d = t.pg.d
	}
	if d == nil {
		return nil
	}
	d.mu.Lock()
	fs := d.onHand[topic]
	d.mu.Unlock()
	return fs
}

// Hand gives v to the receiver of topic (DB.OnHand) once this transaction
// has committed, and never if it rolls back. Without a receiver it does
// nothing.
func (t *Tx) Hand(topic string, v any) {
	if fs := t.receivers(topic); fs != nil {
		t.hands = append(t.hands, handed{to: fs, v: v})
	}
}

// Signal runs the hooks registered with DB.OnSignal(topic) once this
// transaction has committed (never when it rolls back).
func (t *Tx) Signal(topic string) {
	if !slices.Contains(t.signals, topic) {
		t.signals = append(t.signals, topic)
	}
}

// Dialect reports the SQL flavour.
func (t *Tx) Dialect() Dialect { return t.dialect }

// stmtCtx is the context a statement runs under. On SQLite the statements
// of every job of a batch share one transaction on one connection: a
// caller's cancellation must not interrupt the connection (SQLite would roll
// back the whole batch, other callers' writes included), and a context
// without Done also spares modernc.org/sqlite a watcher goroutine per
// statement. The caller still gets its answer only after the commit. Nor
// does it carry the caller's values: neither database/sql nor the driver
// reads any, and context.WithoutCancel(ctx) was an allocation per
// statement (~4 a chat message in the all-in-one).
func (t *Tx) stmtCtx(ctx context.Context) context.Context {
	if t.dialect == SQLite {
		return context.Background()
	}
	if t.batch != nil {
		return batchCtx{Context: t.batch, values: ctx}
	}
	return ctx
}

// Exec runs a statement.
func (t *Tx) Exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	ctx = t.stmtCtx(ctx)
	if t.db != nil { // SQLite: on the writer's connection, in its transaction
		if st := t.db.w.stmt(ctx, q); st != nil {
			return st.ExecContext(ctx, args...)
		}
		return t.db.w.conn.ExecContext(ctx, q, args...)
	}
	if t.pg != nil {
		return t.pg.pgExec(ctx, rebind(t.dialect, q), args)
	}
	return t.tx.ExecContext(ctx, rebind(t.dialect, q), args...)
}

// Query runs a query.
func (t *Tx) Query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	ctx = t.stmtCtx(ctx)
	if t.db != nil {
		if st := t.db.w.stmt(ctx, q); st != nil {
			return st.QueryContext(ctx, args...)
		}
		return t.db.w.conn.QueryContext(ctx, q, args...)
	}
	if t.pg != nil {
		return t.pg.pgQuery(ctx, rebind(t.dialect, q), args)
	}
	return t.tx.QueryContext(ctx, rebind(t.dialect, q), args...)
}

// QueryRow runs a query of one row.
func (t *Tx) QueryRow(ctx context.Context, q string, args ...any) *sql.Row {
	ctx = t.stmtCtx(ctx)
	if t.db != nil {
		if st := t.db.w.stmt(ctx, q); st != nil {
			return st.QueryRowContext(ctx, args...)
		}
		return t.db.w.conn.QueryRowContext(ctx, q, args...)
	}
	if t.pg != nil {
		return t.pg.pgQueryRow(ctx, rebind(t.dialect, q), args)
	}
	return t.tx.QueryRowContext(ctx, rebind(t.dialect, q), args...)
}

// ExecAtCommit runs q, a statement whose result the transaction does not
// need (outbox rows, say), as one of its last: on PostgreSQL with BEGIN
// pipelined it is held back and sent with COMMIT, in the same network
// write — after every statement of Exec, Query and QueryRow, in the order
// of the ExecAtCommit calls, and under every lock the transaction took.
// A write whose only statements are ExecAtCommit's sends them without BEGIN
// or COMMIT (one implicit transaction). A held-back statement's error is
// the commit's: Write returns it (retrying a serialization failure or a
// deadlock as for any statement) and nothing of the write is kept; fn
// does not see it. Elsewhere (SQLite, BEGIN on its own) it is Exec.
func (t *Tx) ExecAtCommit(ctx context.Context, q string, args ...any) error {
	if t.pg != nil {
		t.pg.execAtCommit(rebind(t.dialect, q), args)
		return nil
	}
	_, err := t.Exec(ctx, q, args...)
	return err
}

// SetLocal sets a PostgreSQL setting for the rest of the transaction (SET
// LOCAL name = 'value'), e.g. plan_cache_mode for a statement whose generic
// plan is the one wanted. With BEGIN pipelined it costs no round trip: it
// goes ahead of the transaction's next statement, in the same network
// write (if no statement follows, it is not sent); an error (an unknown
// setting, a bad value) is that statement's. Elsewhere it runs at once.
// On SQLite, which has no such settings, it is an error.
func (t *Tx) SetLocal(ctx context.Context, name, value string) error {
	switch {
	case t.pg != nil:
		return t.pg.setLocal(ctx, name, value)
	case t.dialect == Postgres:
		_, err := t.tx.ExecContext(ctx, `SELECT set_config($1, $2, true)`, name, value)
		return err
	}
	return errors.New("sqldb: SetLocal is for PostgreSQL")
}

// Write runs fn in a transaction and returns once it is durably committed.
// If fn returns an error nothing it wrote is kept. fn may run again on
// PostgreSQL after a serialization failure (or a deadlock, a lock wait in a
// group commit it joined, a group commit's refused COMMIT: nothing of the
// earlier run is kept), so it must not have side effects outside tx. On
// PostgreSQL, a write that joined another's transaction runs to its end
// even if ctx ends meanwhile, and Write then reports its outcome.
func (d *DB) Write(ctx context.Context, fn func(tx *Tx) error) error {
	if d.dialect == Postgres {
		return d.writePostgres(ctx, fn)
	}
	j := newJob(ctx, fn)
	j.queued = time.Now()
	return d.enqueue(ctx, d.jobs, j)
}

// WriteDeferred is Write for a write that need not commit at once: on
// SQLite it waits up to delay for another write to start a group commit and
// joins it (no commit of its own), or commits alone when delay has passed.
// It returns once fn is durably committed, as Write. Meant for writes whose
// caller does not wait on them (receipts): a commit saved costs their
// caller up to delay. On PostgreSQL, whose server group-commits, it is Write.
func (d *DB) WriteDeferred(ctx context.Context, delay time.Duration, fn func(tx *Tx) error) error {
	if d.dialect == Postgres {
		return d.writePostgres(ctx, fn)
	}
	j := newJob(ctx, fn)
	j.due = time.Now().Add(delay)
	return d.enqueue(ctx, d.deferred, j)
}

// enqueue hands j to the writer through q and returns its outcome; j goes
// back to the pool once the writer is done with it (it sends on j.done last,
// and keeps no use of j after that) or never had it.
func (d *DB) enqueue(ctx context.Context, q chan *job, j *job) error {
	select {
	case q <- j:
	case <-ctx.Done():
		jobs.put(j)
		return ctx.Err()
	case <-d.stop:
		jobs.put(j)
		return errors.New("database is closed")
	}
	// Once queued, the outcome is only known when the batch commits: wait for
	// it even if ctx ends, so a caller never reports failure for a commit.
	err := <-j.done
	jobs.put(j)
	return err
}

// writePostgresAlone runs fn in a transaction of its own.
func (d *DB) writePostgresAlone(ctx context.Context, fn func(tx *Tx) error) error {
	for attempt := 0; ; attempt++ {
		t, commit, rollback, err := d.beginPostgres(ctx)
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		if err := fn(t); err != nil {
			rollback()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if isRetryable(err) && attempt < 5 {
				continue
			}
			return err
		}
		if err := commit(); err != nil {
			if ctx.Err() != nil {
				return ctx.Err() // rolled back (database/sql does when ctx ends)
			}
			if isRetryable(err) && attempt < 5 {
				continue
			}
			return fmt.Errorf("commit: %w", err)
		}
		d.committed(t.signals, t.hands)
		return nil
	}
}

// beginPostgres begins a write transaction: with BEGIN pipelined
// (beginPipelinedTx) when the connection allows it, else as a sql.Tx.
func (d *DB) beginPostgres(ctx context.Context) (t *Tx, commit func() error, rollback func(), err error) {
	if d.pipelined {
		return d.beginPipelinedTx(ctx)
	}
	tx, err := d.write.BeginTx(ctx, nil)
	if err != nil {
		return nil, nil, nil, err
	}
	return &Tx{tx: tx, dialect: Postgres}, tx.Commit, func() { _ = tx.Rollback() }, nil
}

func isRetryable(err error) bool {
	var sqlState interface{ SQLState() string }
	if errors.As(err, &sqlState) {
		switch sqlState.SQLState() {
		case "40001", "40P01": // serialization_failure, deadlock_detected
			return true
		}
	}
	return false
}

// IsUniqueViolation reports a unique-key or primary-key violation on either
// backend (PostgreSQL SQLSTATE 23505; SQLite extended codes 2067 and 1555).
func IsUniqueViolation(err error) bool {
	if err == nil {
		return false
	}
	var pg interface{ SQLState() string }
	if errors.As(err, &pg) {
		return pg.SQLState() == "23505"
	}
	var lite interface{ Code() int }
	if errors.As(err, &lite) {
		const constraintUnique, constraintPrimaryKey = 2067, 1555
		return lite.Code() == constraintUnique || lite.Code() == constraintPrimaryKey
	}
	return false
}

// poolMaxConns takes pool_max_conns out of a postgres:// DSN (the server
// would refuse it as an unknown setting) and returns its value, or
// DefaultPostgresConns without it.
func poolMaxConns(dsn string) (string, int, error) {
	return intParam(dsn, "pool_max_conns", DefaultPostgresConns, 1, 1000)
}

// intParam takes the whole-number parameter name, from lo to hi, out of a
// postgres:// DSN and returns its value, or def without it.
func intParam(dsn, name string, def, lo, hi int) (string, int, error) {
	v, dsn, err := takeParam(dsn, name)
	if err != nil || v == "" {
		return dsn, def, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return "", 0, fmt.Errorf("open postgres: %s=%q must be a whole number from %d to %d", name, v, lo, hi)
	}
	return dsn, n, nil
}

// takeParam takes the query parameter name out of a postgres:// DSN (the
// server would refuse it as an unknown setting) and returns its value ("" if
// absent) and the DSN without it.
func takeParam(dsn, name string) (string, string, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", "", errors.New("open postgres: the DSN is not a URL")
	}
	q := u.Query()
	v := q.Get(name)
	if v == "" {
		return "", dsn, nil
	}
	q.Del(name)
	u.RawQuery = q.Encode()
	return v, u.String(), nil
}
