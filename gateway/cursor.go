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
type cursor struct {
	d, c uint64
}

func (c cursor) String() string { return string(c.append(make([]byte, 0, 24))) }

// append appends c's String to b.
func (c cursor) append(b []byte) []byte {
	b = strconv.AppendUint(append(b, 'd'), c.d, 10)
	return strconv.AppendUint(append(b, ".c"...), c.c, 10)
}

var errBadCursor = errors.New("bad cursor")

// parseCursor reads "d<seq>.c<seq>".
func parseCursor(s string) (cursor, error) {
	d, c, ok := strings.Cut(s, ".")
	if !ok || !strings.HasPrefix(d, "d") || !strings.HasPrefix(c, "c") {
		return cursor{}, errBadCursor
	}
	dn, err := strconv.ParseUint(d[1:], 10, 64)
	if err != nil {
		return cursor{}, errBadCursor
	}
	cn, err := strconv.ParseUint(c[1:], 10, 64)
	if err != nil {
		return cursor{}, errBadCursor
	}
	return cursor{d: dn, c: cn}, nil
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
