package sqldb

import (
	"context"
	"database/sql"
	"sync"

	"modernc.org/sqlite"
)

// SQLite's memory, for the memory benchmarks (issue 10): SQLite's C heap
// (modernc.org/sqlite allocates it outside the Go heap, with
// modernc.org/libc's allocator) by connection. (sqlite3_status's process
// total is not kept: modernc's SQLite is built without memory statistics.)

// ConnMemory is what one SQLite connection holds, as sqlite3_db_status
// reports it: its page cache, schemas, prepared statements and lookaside
// slots in use, in bytes.
type ConnMemory struct {
	DB, Pool                        string // Pool: "writer", "checkpointer" or "reader"
	Cache, Schema, Stmts, Lookaside int
	// Hits and Misses: the page cache's, since the connection opened
	// (a miss reads the page from the WAL or the database file).
	Hits, Misses int
	// Spills: dirty pages a write transaction wrote to the WAL before its
	// COMMIT because the cache had no room for them.
	Spills int
}

// Total is the connection's bytes.
func (m ConnMemory) Total() int { return m.Cache + m.Schema + m.Stmts + m.Lookaside }

// openDBs records every open SQLite database here, for SQLiteMemory.
var openDBs struct {
	sync.Mutex
	m map[*DB]string
}

func registerSQLite(d *DB, name string) {
	openDBs.Lock()
	defer openDBs.Unlock()
	if openDBs.m == nil {
		openDBs.m = map[*DB]string{}
	}
	openDBs.m[d] = name
}

func unregisterSQLite(d *DB) {
	openDBs.Lock()
	defer openDBs.Unlock()
	delete(openDBs.m, d)
}

// SQLiteMemory reports each connection of every open SQLite database in
// the process: the writer, the checkpointer and the readers idle in the
// read pool (it takes them from the pool for the moment it reads them, so
// call it when the process is idle; a reader in use is not counted).
func SQLiteMemory(ctx context.Context) []ConnMemory {
	openDBs.Lock()
	dbs := make(map[*DB]string, len(openDBs.m))
	for d, n := range openDBs.m {
		dbs[d] = n
	}
	openDBs.Unlock()
	var out []ConnMemory
	for d, name := range dbs {
		out = append(out, d.connMemory(ctx, name)...)
	}
	return out
}

func (d *DB) connMemory(ctx context.Context, name string) []ConnMemory {
	var out []ConnMemory
	add := func(pool string, c *sql.Conn) {
		m := ConnMemory{DB: name, Pool: pool}
		_ = c.Raw(func(dc any) error {
			s, ok := dc.(sqlite.DBStatus)
			if !ok {
				return nil
			}
			m.Cache, _, _ = s.Status(sqlite.DBStatusCacheUsed, false)
			m.Schema, _, _ = s.Status(sqlite.DBStatusSchemaUsed, false)
			m.Stmts, _, _ = s.Status(sqlite.DBStatusStmtUsed, false)
			m.Lookaside, _, _ = s.Status(sqlite.DBStatusLookasideUsed, false)
			m.Hits, _, _ = s.Status(sqlite.DBStatusCacheHit, false)
			m.Misses, _, _ = s.Status(sqlite.DBStatusCacheMiss, false)
			m.Spills, _, _ = s.Status(sqlite.DBStatusCacheSpill, false)
			return nil
		})
		out = append(out, m)
	}
	if d.w != nil {
		add("writer", d.w.conn)
	}
	if d.ckpt != nil {
		add("checkpointer", d.ckpt.conn)
	}
	var held []*sql.Conn
	for range d.read.Stats().Idle {
		c, err := d.read.Conn(ctx)
		if err != nil {
			break
		}
		held = append(held, c)
		add("reader", c)
	}
	for _, c := range held {
		_ = c.Close()
	}
	return out
}
