package gateway

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// cursor is an event-stream position: the last sequence of the delivery
// stream and of the conversation stream that a client has been given. Its
// text form, the SSE id, is "d<seq>.c<seq>" (e.g. "d12.c7"). Resuming after
// it replays exactly what came later in each stream.
//
// One delivery stream message may carry several messages (a receipt
// advance's echo: MessageUpdated.messages), each written as its own
// message.updated with its own id: dk > 0 says that of the delivery
// stream's message d only the parts up to dk were given, the rest not yet;
// its text form is "d<seq>.<dk>.c<seq>" (e.g. "d12.3.c7"). A cursor with
// dk = 0 (every cursor before such events existed) is past all of d.
type cursor struct {
	d, c uint64
	dk   uint32
}

func (c cursor) String() string { return string(c.append(make([]byte, 0, 32))) }

// append appends c's String to b.
func (c cursor) append(b []byte) []byte {
	b = strconv.AppendUint(append(b, 'd'), c.d, 10)
	if c.dk != 0 {
		b = strconv.AppendUint(append(b, '.'), uint64(c.dk), 10)
	}
	return strconv.AppendUint(append(b, ".c"...), c.c, 10)
}

var errBadCursor = errors.New("bad cursor")

// parseCursor reads "d<seq>.c<seq>" and "d<seq>.<part>.c<seq>".
func parseCursor(s string) (cursor, error) {
	d, c, ok := strings.Cut(s, ".")
	if !ok || !strings.HasPrefix(d, "d") {
		return cursor{}, errBadCursor
	}
	var dk uint64
	if !strings.HasPrefix(c, "c") {
		k, rest, ok := strings.Cut(c, ".")
		if !ok || k == "" || k[0] < '1' || k[0] > '9' || !strings.HasPrefix(rest, "c") {
			return cursor{}, errBadCursor
		}
		var err error
		if dk, err = strconv.ParseUint(k, 10, 32); err != nil {
			return cursor{}, errBadCursor
		}
		c = rest
	}
	dn, err := strconv.ParseUint(d[1:], 10, 64)
	if err != nil || (dk != 0 && dn == 0) {
		return cursor{}, errBadCursor
	}
	cn, err := strconv.ParseUint(c[1:], 10, 64)
	if err != nil {
		return cursor{}, errBadCursor
	}
	return cursor{d: dn, c: cn, dk: uint32(dk)}, nil
}

// with is c with stream's position set past seq (all of it).
func (c cursor) with(stream int, seq uint64) cursor {
	if stream == streamD {
		c.d, c.dk = seq, 0
	} else {
		c.c = seq
	}
	return c
}

// at is c's position in stream: the last sequence it is past all of (a
// delivery stream message it holds only some parts of is not).
func (c cursor) at(stream int) uint64 {
	if stream == streamD {
		if c.dk != 0 {
			return c.d - 1
		}
		return c.d
	}
	return c.c
}

// covers reports whether e was given before c: e is at or before c's
// position in its stream (a part of a stream message: at or before c's
// part of it).
func (c cursor) covers(e *event) bool {
	if e.stream != streamD {
		return e.seq <= c.c
	}
	if e.seq != c.d {
		return e.seq < c.d
	}
	return c.dk == 0 || (e.part != 0 && e.part <= c.dk)
}

// after is c once e is given.
func (c cursor) after(e *event) cursor {
	c = c.with(e.stream, e.seq)
	if e.stream == streamD && e.part != 0 && !e.last {
		c.dk = e.part
	}
	return c
}

// lastEventID is the client's resume cursor: the Last-Event-ID header that
// EventSource sends on reconnect, or the lastEventId query parameter for
// polyfills that cannot set headers.
func lastEventID(r *http.Request) string {
	if v := strings.TrimSpace(r.Header.Get("Last-Event-ID")); v != "" {
		return v
	}
	return strings.TrimSpace(r.URL.Query().Get("lastEventId"))
}

// resumable reports whether a stream still holds everything after seq: no
// message after it has been removed (retention), and seq is not beyond the
// stream's end (a cursor from a stream that was since recreated).
func resumable(seq uint64, st jetstream.StreamState) bool {
	if seq > st.LastSeq {
		return false
	}
	return st.FirstSeq <= seq+1
}

// resumableD reports whether the delivery stream still holds everything
// after c's position in it (resumable), and the message c holds only some
// parts of.
func (c cursor) resumableD(st jetstream.StreamState) bool {
	if c.dk != 0 && c.d > st.LastSeq {
		return false
	}
	return resumable(c.at(streamD), st)
}
