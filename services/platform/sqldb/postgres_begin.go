package sqldb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"weak"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// A write transaction on PostgreSQL used to cost a network round trip for
// BEGIN alone, then one per statement, then one for COMMIT. beginFilter
// sends BEGIN in the same network write as the transaction's first
// statement and takes BEGIN's replies out of what the server answers, so
// pgx (and database/sql above it) see only the statement's: one round trip
// fewer per write transaction.
//
// It sits between pgx's protocol frontend and the connection (TLS already
// below it), one per connection. BEGIN goes as the extended-protocol
// messages Parse, Bind and Execute of "begin" with no Sync after them, ahead
// of the statement's own messages, which end with pgx's Sync: if BEGIN
// failed, the server would skip the statement up to that Sync, and the
// statement would report BEGIN's error; the statement never runs outside
// the transaction. The unnamed statement and portal it uses are free: pgx
// prepares named statements (QueryExecModeCacheStatement, its default,
// which openPostgres requires for this). A simple-protocol query (pgx's
// Exec without arguments) cannot follow it without a Sync: Tx sends BEGIN
// on its own before such a statement, and Write refuses it as a protocol
// error should one come. A transaction's SET LOCALs (Tx.SetLocal) go the
// same way, after BEGIN or ahead of a later statement.
//
// Only the goroutine running a pgx operation on the connection calls Read
// and Write, and the one holding the connection arms it: no locking.
type beginFilter struct {
	r io.Reader
	w io.Writer

	armed bool   // the next Write carries BEGIN (or pre) ahead of itself
	skip  int    // the replies to what went ahead still to take out of the stream
	in    []byte // bytes read while skip > 0, handed on from off
	off   int
	wbuf  []byte
	// pre and preTags, when set, are what the armed write carries instead
	// of BEGIN alone: parameterless statements as Parse, Bind and Execute
	// on the unnamed statement and portal (encodeSimple), and their
	// CommandComplete tags in order (BEGIN with a SET LOCAL: pgTx.before).
	pre     []byte
	preTags []string
	tags    []string // the tags of what went ahead with the last armed write

	writes int // network writes (tests)
}

// beginMsgs is BEGIN as Parse, Bind and Execute on the unnamed statement
// and portal; beginReplies are the server's answers to them in order.
var (
	beginMsgs    = encodeSimple(nil, "begin")
	beginReplies = [...]byte{'1', '2', 'C'} // ParseComplete, BindComplete, CommandComplete
	beginTags    = []string{"BEGIN"}
)

// encodeSimple appends q, a statement without parameters, as Parse, Bind
// and Execute on the unnamed statement and portal, with no Sync.
func encodeSimple(b []byte, q string) []byte {
	for _, m := range []pgproto3.FrontendMessage{&pgproto3.Parse{Query: q}, &pgproto3.Bind{}, &pgproto3.Execute{}} {
		var err error
		if b, err = m.Encode(b); err != nil {
			panic(err)
		}
	}
	return b
}

var errSimpleAfterBegin = errors.New("sqldb: a simple-protocol query cannot follow a pipelined BEGIN")

func (f *beginFilter) Write(b []byte) (int, error) {
	f.writes++
	if !f.armed {
		return f.w.Write(b)
	}
	f.armed = false
	if len(b) == 0 || b[0] == 'Q' {
		return 0, errSimpleAfterBegin // pgx closes the connection
	}
	pre, tags := beginMsgs, beginTags
	if f.pre != nil {
		pre, tags = f.pre, f.preTags
		f.pre, f.preTags = nil, nil
	}
	f.wbuf = append(append(f.wbuf[:0], pre...), b...)
	f.tags = tags
	f.skip = len(beginReplies) * len(tags)
	n, err := f.w.Write(f.wbuf)
	if cap(f.wbuf) > 4096 {
		f.wbuf = nil
	}
	return max(n-len(pre), 0), err
}

// disarm undoes an arming whose statement never reached the network.
func (f *beginFilter) disarm() {
	f.armed = false
	f.pre, f.preTags = nil, nil
}

func (f *beginFilter) Read(p []byte) (int, error) {
	for f.skip > 0 {
		if err := f.strip(); err != nil {
			return 0, err
		}
		if f.skip == 0 {
			break
		}
		n, err := f.r.Read(p)
		f.in = append(f.in, p[:n]...)
		if err != nil {
			return 0, err
		}
	}
	if f.off < len(f.in) {
		n := copy(p, f.in[f.off:])
		f.off += n
		if f.off == len(f.in) {
			f.in, f.off = f.in[:0], 0
		}
		return n, nil
	}
	return f.r.Read(p)
}

// strip takes BEGIN's complete replies out of f.in, leaving any message the
// server may send at any time (notice, parameter status, notification). An
// error reply ends the stripping: it is the statement's answer too.
func (f *beginFilter) strip() error {
	pos := f.off
	for f.skip > 0 && len(f.in)-pos >= 5 {
		typ := f.in[pos]
		size := 1 + int(binary.BigEndian.Uint32(f.in[pos+1:]))
		if size < 5 {
			return errors.New("sqldb: malformed message from the server")
		}
		if len(f.in)-pos < size {
			return nil
		}
		i := len(beginReplies)*len(f.tags) - f.skip // the reply's place in what went ahead
		switch typ {
		case beginReplies[i%len(beginReplies)]:
			if tag := f.tags[i/len(beginReplies)]; typ == 'C' && string(f.in[pos+5:pos+size]) != tag+"\x00" {
				return fmt.Errorf("sqldb: %s answered %q", tag, f.in[pos+5:pos+size])
			}
			f.in = append(f.in[:pos], f.in[pos+size:]...)
			f.skip--
		case 'N', 'S', 'A':
			pos += size
		case 'E':
			f.skip = 0
		default:
			return fmt.Errorf("sqldb: unexpected message %q in reply to BEGIN", typ)
		}
	}
	return nil
}

// beginFilters finds a connection's filter from its frontend (the only
// thing pgx built with it that a pgx.Conn shows). The key is weak and the
// entry goes with its frontend: a connection that failed to open leaves
// nothing behind.
var beginFilters sync.Map // weak.Pointer[pgproto3.Frontend] → *beginFilter

func buildBeginFrontend(r io.Reader, w io.Writer) *pgproto3.Frontend {
	f := &beginFilter{r: r, w: w}
	fe := pgproto3.NewFrontend(f, f)
	key := weak.Make(fe)
	beginFilters.Store(key, f)
	runtime.AddCleanup(fe, func(k weak.Pointer[pgproto3.Frontend]) { beginFilters.Delete(k) }, key)
	return fe
}

func filterOf(pc *pgconn.PgConn) *beginFilter {
	if f, ok := beginFilters.Load(weak.Make(pc.Frontend())); ok {
		return f.(*beginFilter)
	}
	return nil
}
