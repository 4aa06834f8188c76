package sqldb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/stdlib"
)

// pgTx is a PostgreSQL write transaction whose BEGIN travels with its first
// statement (beginFilter). It runs on a connection of its own taken from
// the pool (database/sql still builds the statements' Rows and Results, and
// pgx still caches their prepared statements); sqldb sends BEGIN, COMMIT
// and ROLLBACK itself. The connection goes back to the pool only idle (no
// transaction open): else it is closed.
type pgTx struct {
	d      *DB // its database (the receivers of Tx.Hand)
	conn   *sql.Conn
	filter *beginFilter
	begun  bool // BEGIN is sent or armed to go with the next statement
	// atCommit holds ExecAtCommit's statements: they go with COMMIT, in
	// one network write (commitWith).
	atCommit []atCommitStmt
	// sets are parameterless statements to go ahead of the next statement
	// (SetLocal's SET LOCAL; a group commit's SAVEPOINT): armedBegin and
	// armedSets what the filter is armed with.
	sets       []preStmt
	armedBegin bool
	armedSets  []preStmt
	// flushes counts the times the pending statements (BEGIN, sets) went
	// out ahead of a statement: a group commit tells by it whether a
	// write reached the server. locals are the settings SetLocal set since
	// the group commit last looked (pgBatch).
	flushes    int
	armedFlush bool
	locals     []string
}

// preStmt is a statement sent ahead of another and the tag of its reply
// (beginFilter checks it).
type preStmt struct{ q, tag string }

type atCommitStmt struct {
	q    string
	args []any
}

// rollbackTimeout bounds a ROLLBACK sent after the caller's context ended.
const rollbackTimeout = 5 * time.Second

func (d *DB) beginPipelined(ctx context.Context) (*pgTx, error) {
	conn, err := d.write.Conn(ctx)
	if err != nil {
		return nil, err
	}
	p := &pgTx{d: d, conn: conn}
	_ = conn.Raw(func(dc any) error {
		if c, ok := dc.(*stdlib.Conn); ok {
			p.filter = filterOf(c.Conn().PgConn())
		}
		return nil
	})
	if p.filter == nil { // not opened by openPostgres: BEGIN alone
		if err := p.exec(ctx, "begin"); err != nil {
			p.release()
			return nil, err
		}
		p.begun = true
	}
	return p, nil
}

// raw runs f on the connection's pgx.Conn.
func (p *pgTx) raw(f func(c *pgx.Conn) error) error {
	return p.conn.Raw(func(dc any) error { return f(dc.(*stdlib.Conn).Conn()) })
}

func (p *pgTx) exec(ctx context.Context, q string) error {
	return p.raw(func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, q)
		return err
	})
}

// before readies BEGIN and the pending SET LOCALs (setLocal) for a
// statement: armed to go in the statement's network write or, before a
// statement pgx sends with the simple protocol (Exec without arguments),
// sent on their own.
func (p *pgTx) before(ctx context.Context, simple bool) error {
	if p.begun && len(p.sets) == 0 {
		return nil
	}
	if simple {
		if !p.begun {
			if err := p.exec(ctx, "begin"); err != nil {
				return err
			}
			p.begun = true
		}
		for len(p.sets) > 0 {
			if err := p.exec(ctx, p.sets[0].q); err != nil {
				return err
			}
			p.sets = p.sets[1:]
		}
		p.flushes++
		return nil
	}
	p.filter.armed = true
	if len(p.sets) > 0 {
		var pre []byte
		var tags []string
		if !p.begun {
			pre, tags = append(pre, beginMsgs...), append(tags, beginTags...)
		}
		for _, st := range p.sets {
			pre, tags = encodeSimple(pre, st.q), append(tags, st.tag)
		}
		p.filter.pre, p.filter.preTags = pre, tags
	}
	p.armedBegin, p.armedSets = !p.begun, p.sets
	p.begun, p.sets = true, nil
	p.flushes++
	p.armedFlush = true
	return nil
}

// after notes a statement that never reached the network (its context
// ended first, or its arguments did not encode): what was armed to go with
// it did not go either.
func (p *pgTx) after() {
	if p.filter != nil && p.filter.armed {
		p.filter.disarm()
		p.begun = p.begun && !p.armedBegin
		p.sets = append(p.armedSets, p.sets...)
		if p.armedFlush {
			p.flushes--
		}
	}
	p.armedBegin, p.armedSets, p.armedFlush = false, nil, false
}

// setLocal readies SET LOCAL name = value to go ahead of the transaction's
// next statement, in its network write (before). Without a filter BEGIN
// has gone already: it runs at once.
func (p *pgTx) setLocal(ctx context.Context, name, value string) error {
	if !validSettingName(name) {
		return fmt.Errorf("sqldb: SetLocal: bad setting name %q", name)
	}
	q := "SET LOCAL " + name + " = '" + strings.ReplaceAll(value, "'", "''") + "'"
	p.locals = append(p.locals, name)
	if p.filter == nil {
		return p.exec(ctx, q)
	}
	p.sets = append(p.sets, preStmt{q, "SET"})
	return nil
}

// validSettingName: letters, digits, '_' and '.' (a custom setting's
// prefix), not starting with a digit.
func validSettingName(name string) bool {
	if name == "" || (name[0] >= '0' && name[0] <= '9') {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func (p *pgTx) commit(ctx context.Context) error {
	if len(p.atCommit) > 0 {
		return p.commitWith(ctx)
	}
	if !p.begun {
		return nil // nothing ran
	}
	return p.raw(func(c *pgx.Conn) error {
		tag, err := c.Exec(ctx, "commit")
		if err == nil && tag.String() != "COMMIT" {
			// A statement failed and fn went on: the server rolled back.
			err = pgx.ErrTxCommitRollback
		}
		return err
	})
}

// commitWith sends the statements held back by ExecAtCommit and then
// COMMIT as one pipeline (Bind and Execute of each, one Sync at the end, in
// one network write; a statement not yet prepared on the connection is
// prepared first, in a round trip of its own, as for any statement): the
// write's last round trip carries its last statements. If one of them
// fails, the server skips the rest up to the Sync, COMMIT included, and the
// transaction is rolled back (rollback). When no other statement ran (no
// BEGIN was sent), they go without BEGIN and COMMIT: the statements up to a
// Sync are one implicit transaction, committed at the Sync, all or nothing,
// as durably as an explicit COMMIT.
//
// The arguments are encoded into a buffer kept from one commit to the next
// (atCommitBufs) and handed to pgconn as they are: pgx's own batch encoded
// them into its parameter buffer and copied them into its write buffer,
// and shrinks both after every statement and every write (to 256 B and
// 1 KiB), so every COMMIT carrying a few KiB of outbox payloads regrew both
// by doubling (a quarter to a third of delivery's allocations, BENCHMARKS.md
// dist16 and pg17).
func (p *pgTx) commitWith(ctx context.Context) error {
	p.atCommit = mergeInserts(p.atCommit)
	return p.raw(func(c *pgx.Conn) error {
		// SET LOCALs still pending apply to the held-back statements too:
		// they go first, in a transaction of their own (begin) if none is.
		var ahead []string
		if len(p.sets) > 0 && !p.begun {
			ahead = append(ahead, "begin")
			p.begun = true
		}
		for _, st := range p.sets {
			ahead = append(ahead, st.q)
		}
		p.sets = nil
		stmts := make([]*pgconn.StatementDescription, len(p.atCommit))
		for i, s := range p.atCommit {
			sd, err := c.Prepare(ctx, s.q, s.q) // pgx keeps it: a round trip the first time only
			if err != nil {
				return err
			}
			stmts[i] = sd
		}
		var commit *pgconn.StatementDescription
		if p.begun {
			var err error
			if commit, err = c.Prepare(ctx, "commit", "commit"); err != nil {
				return err
			}
		}
		buf := atCommitBufs.Get().(*atCommitBuf)
		defer buf.put()
		batch := &pgconn.Batch{}
		for _, q := range ahead {
			batch.ExecParams(q, nil, nil, nil, nil)
		}
		for i, s := range p.atCommit {
			if err := buf.encode(c.TypeMap(), stmts[i], s.args); err != nil {
				return err
			}
		}
		for i, sd := range stmts {
			batch.ExecPrepared(sd.Name, buf.params[i], buf.formats[i], nil)
		}
		if commit != nil {
			batch.ExecPrepared(commit.Name, nil, nil, nil)
		}
		if p.filter != nil {
			p.filter.writes++ // pgconn writes a batch past the frontend (and the filter)
		}
		results, err := c.PgConn().ExecBatch(ctx, batch).ReadAll()
		if err != nil {
			return err
		}
		if commit != nil && (len(results) == 0 || results[len(results)-1].CommandTag.String() != "COMMIT") {
			return pgx.ErrTxCommitRollback // as in commit
		}
		return nil
	})
}

// atCommitBuf holds the encoded arguments of a COMMIT's held-back
// statements: params[i] are statement i's values, slices of vals.
type atCommitBuf struct {
	vals    []byte
	params  [][][]byte
	formats [][]int16
	flat    [][]byte
	fmts    []int16
}

var atCommitBufs = sync.Pool{New: func() any { return &atCommitBuf{} }}

// maxAtCommitBuf bounds the bytes a buffer keeps for the next commit.
const maxAtCommitBuf = 1 << 20

func (b *atCommitBuf) put() {
	if cap(b.vals) > maxAtCommitBuf {
		return
	}
	b.vals, b.flat, b.fmts = b.vals[:0], b.flat[:0], b.fmts[:0]
	clear(b.params)
	b.params, b.formats = b.params[:0], b.formats[:0]
	atCommitBufs.Put(b)
}

// encode appends sd's arguments as pgx would send them (its extended
// query builder: strings as text, every other value in the format the
// type map prefers for the parameter's type, else the other one).
func (b *atCommitBuf) encode(m *pgtype.Map, sd *pgconn.StatementDescription, args []any) error {
	if len(sd.ParamOIDs) != len(args) {
		return fmt.Errorf("sqldb: %d arguments for %d parameters", len(args), len(sd.ParamOIDs))
	}
	first := len(b.flat)
	for i, arg := range args {
		oid := sd.ParamOIDs[i]
		f := m.FormatCodeForOID(oid)
		if _, ok := arg.(string); ok {
			f = pgx.TextFormatCode
		} else if _, ok := arg.(*string); ok {
			f = pgx.TextFormatCode
		}
		pos := len(b.vals)
		out, err := m.Encode(oid, f, arg, b.vals)
		if err != nil {
			f = 1 - f // the other format
			if out, err = m.Encode(oid, f, arg, b.vals); err != nil {
				return fmt.Errorf("failed to encode args[%d]: %w", i, err)
			}
		}
		if out == nil { // NULL
			b.flat = append(b.flat, nil)
		} else {
			b.vals = out
			b.flat = append(b.flat, out[pos:len(out):len(out)])
		}
		b.fmts = append(b.fmts, f)
	}
	// A value stays where it was encoded: an append that moves vals (or
	// flat, fmts) copies it, and the earlier slices keep the old array.
	b.params = append(b.params, b.flat[first:len(b.flat):len(b.flat)])
	b.formats = append(b.formats, b.fmts[first:len(b.fmts):len(b.fmts)])
	return nil
}

// rollback ends whatever transaction the connection is in, even after ctx
// ended.
func (p *pgTx) rollback(ctx context.Context) {
	_ = p.raw(func(c *pgx.Conn) error {
		pc := c.PgConn()
		if pc.IsClosed() || pc.TxStatus() == 'I' {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		_, err := c.Exec(ctx, "rollback")
		return err
	})
}

// release gives the connection back to the pool if it is idle and sound,
// else closes it.
func (p *pgTx) release() {
	_ = p.raw(func(c *pgx.Conn) error {
		pc := c.PgConn()
		if pc.IsClosed() || pc.TxStatus() != 'I' || (p.filter != nil && (p.filter.armed || p.filter.skip > 0)) {
			return driver.ErrBadConn // database/sql closes it
		}
		return nil
	})
	_ = p.conn.Close()
}

// beginPipelinedTx begins a write whose BEGIN travels with its first
// statement (writePostgres): the Tx, and how to commit it or roll it back,
// each giving the connection back.
func (d *DB) beginPipelinedTx(ctx context.Context) (t *Tx, commit func() error, rollback func(), err error) {
	p, err := d.beginPipelined(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	commit = func() error {
		err := p.commit(ctx)
		if err != nil {
			p.rollback(ctx)
		}
		p.release()
		return err
	}
	rollback = func() {
		p.rollback(ctx)
		p.release()
	}
	return &Tx{pg: p, dialect: Postgres}, commit, rollback, nil
}

// pipelineBegin reports whether cfg lets BEGIN go with the first statement:
// pgx must send statements with the extended protocol on named prepared
// statements (its default mode, with its statement cache).
func pipelineBegin(cfg *pgx.ConnConfig) bool {
	return cfg.DefaultQueryExecMode == pgx.QueryExecModeCacheStatement && cfg.StatementCacheCapacity > 0
}

// pgExec, pgQuery and pgQueryRow run a statement of a pipelined transaction.
func (p *pgTx) pgExec(ctx context.Context, q string, args []any) (sql.Result, error) {
	if err := p.before(ctx, len(args) == 0); err != nil {
		return nil, err
	}
	defer p.after()
	return p.conn.ExecContext(ctx, q, args...)
}

func (p *pgTx) pgQuery(ctx context.Context, q string, args []any) (*sql.Rows, error) {
	_ = p.before(ctx, false) // arming cannot fail
	defer p.after()
	return p.conn.QueryContext(ctx, q, args...)
}

// execAtCommit holds q back to go with COMMIT (commitWith). args are
// copied: the caller may reuse its slice.
func (p *pgTx) execAtCommit(q string, args []any) {
	p.atCommit = append(p.atCommit, atCommitStmt{q: q, args: append([]any(nil), args...)})
}

func (p *pgTx) pgQueryRow(ctx context.Context, q string, args []any) *sql.Row {
	_ = p.before(ctx, false)
	defer p.after()
	return p.conn.QueryRowContext(ctx, q, args...)
}

// maxMergedRows bounds the rows of an INSERT mergeInserts builds (and so
// the distinct statements it makes of one: one per row count).
const maxMergedRows = 32

// mergeInserts joins held-back statements that follow one another and are
// the same plain multi-row INSERT, "INSERT INTO t (c…) VALUES ($1, …), …"
// with nothing after its rows, into one INSERT of all their rows, in their
// order: a group commit's writes each hold back their outbox rows, and
// each held-back statement is a Bind and Execute the server runs on its
// own. The rows are inserted in the same order, in the same transaction,
// and a failure fails the COMMIT as before (every statement up to the Sync
// is skipped either way).
func mergeInserts(stmts []atCommitStmt) []atCommitStmt {
	if len(stmts) < 2 {
		return stmts
	}
	out := stmts[:0:0]
	var head string // the INSERT of out's last statement, "" when it cannot take more rows
	var width, rows int
	for _, st := range stmts {
		h, w, r := insertShape(st.q, len(st.args))
		if h != "" && h == head && w == width && rows+r <= maxMergedRows {
			last := &out[len(out)-1]
			rows += r
			last.args = append(last.args, st.args...)
			last.q = insertText(h, w, rows)
			continue
		}
		out = append(out, atCommitStmt{q: st.q, args: slices.Clone(st.args)})
		head, width, rows = h, w, r
	}
	return out
}

// insertShape reads q as insertText(head, width, rows) for n arguments;
// head is "" when q is not such an INSERT.
func insertShape(q string, n int) (head string, width, rows int) {
	if !strings.HasPrefix(q, "INSERT INTO ") {
		return "", 0, 0
	}
	i := strings.Index(q, " VALUES (")
	if i < 0 || n == 0 {
		return "", 0, 0
	}
	rows = strings.Count(q[i:], "(")
	if rows == 0 || n%rows != 0 {
		return "", 0, 0
	}
	head, width = q[:i], n/rows
	if insertText(head, width, rows) != q {
		return "", 0, 0
	}
	return head, width, rows
}

// insertText is head followed by rows rows of width parameters, numbered
// from $1 (as rebind writes them).
func insertText(head string, width, rows int) string {
	var b strings.Builder
	b.Grow(len(head) + 8 + rows*width*5)
	b.WriteString(head)
	b.WriteString(" VALUES ")
	k := 0
	for r := range rows {
		if r > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for c := range width {
			if c > 0 {
				b.WriteString(", ")
			}
			k++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(k))
		}
		b.WriteByte(')')
	}
	return b.String()
}
