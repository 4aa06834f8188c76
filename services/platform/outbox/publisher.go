package outbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// publisher sends a relay's rows to JetStream and collects their
// acknowledgements (PubAcks) itself, instead of nats.go's PublishMsgAsync:
// that one allocates per row a message, its header map and slices, two
// option closures, a future with two channels and a map entry, and decodes
// every PubAck with encoding/json (~30 of the relay's ~47 allocations per
// row; BENCHMARKS.md, nats12). Here one message and its header are reused
// (PublishMsg has written them to the connection's buffer when it returns),
// every row of a round replies to "<inbox>.<round>.<index>", the replies
// land in a slice by index, and a PubAck is read by hand (anything but the
// server's success form, errors included, by encoding/json).
//
// The guarantees are the publish's, unchanged: each row carries its
// Nats-Msg-Id (dedupe) and, chained, its Nats-Expected-Last-Sequence; a
// row counts as published only on its PubAck. Replies of an earlier round
// (one that gave up waiting) are dropped by their round number.
type publisher struct {
	nc    *nats.Conn
	inbox string // "_INBOX.<nuid>."
	// publish is nc.PublishMsg (tests intercept it: OnPublish).
	publish func(*nats.Msg) error

	// tag names this publisher's fast batches ("<tag>-<round>-<first>"):
	// its inbox's unique token.
	tag string

	mu     sync.Mutex
	sub    *nats.Subscription
	round  uint64
	got    []*nats.Msg   // the current round's replies by index
	done   []*nats.Msg   // the current round's batch PubAcks, by the batch's first index
	notify chan struct{} // a reply arrived (capacity 1)

	// Reused by send (one relay goroutine sends at a time).
	msg        nats.Msg
	id, expect []string
	reply      []byte
}

func newPublisher(js jetstream.JetStream) *publisher {
	p := &publisher{notify: make(chan struct{}, 1), id: make([]string, 1), expect: make([]string, 1)}
	p.msg.Header = nats.Header{}
	if js == nil { // a relay that never publishes (tests)
		p.inbox = nats.NewInbox() + "."
		p.publish = func(*nats.Msg) error { return nats.ErrConnectionClosed }
		return p
	}
	p.nc = js.Conn()
	p.inbox = p.nc.NewInbox() + "."
	p.publish = p.nc.PublishMsg
	p.tag = p.inbox[strings.LastIndexByte(p.inbox[:len(p.inbox)-1], '.')+1 : len(p.inbox)-1]
	return p
}

// begin starts a round of n rows (more can be added with grow) and returns
// its number; replies of earlier rounds are dropped from now on.
func (p *publisher) begin(n int) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sub == nil {
		if p.nc == nil {
			return 0, nats.ErrConnectionClosed
		}
		sub, err := p.nc.Subscribe(p.inbox+">", p.receive)
		if err != nil {
			return 0, err
		}
		// receive only files a reply: no slow-consumer limit is needed.
		_ = sub.SetPendingLimits(-1, -1)
		p.sub = sub
	}
	p.round++
	clear(p.got)
	clear(p.done)
	p.got, p.done = p.got[:0], p.done[:0]
	p.grow(n)
	return p.round, nil
}

// grow makes room for the current round's replies up to index n-1.
// Locked by the caller.
func (p *publisher) grow(n int) {
	if n > len(p.got) {
		p.got = append(p.got, make([]*nats.Msg, n-len(p.got))...)
		p.done = append(p.done, make([]*nats.Msg, n-len(p.done))...)
	}
}

// close drops the reply subscription (Run's end).
func (p *publisher) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sub != nil {
		_ = p.sub.Unsubscribe()
		p.sub = nil
	}
	p.got, p.done = nil, nil
}

// receive files a reply by its subject's round and index (the
// subscription's callback). A reply to a row of a fast batch (its subject
// goes on with the batch's tokens, see send) is one of the server's flow
// messages, dropped ({"type":"ack"…}: rows persisted so far; {"type":"gap"…}:
// informational, the batch's PubAck says what was stored), the batch's
// PubAck (it names the batch: filed by the batch's first index, see
// batchAck), or anything else for the row itself: {"type":"err"…} (the row
// was refused inside the batch), an error (refused before the batch: the
// row, or every row of a batch whose first was refused), or the PubAck of a
// row stored on its own (a server that does not batch treats the reply as
// any other).
func (p *publisher) receive(m *nats.Msg) {
	rest, ok := strings.CutPrefix(m.Subject, p.inbox)
	if !ok {
		return
	}
	rs, is, ok := strings.Cut(rest, ".")
	if !ok {
		return
	}
	is, bs, batched := strings.Cut(is, ".")
	round, err1 := strconv.ParseUint(rs, 10, 64)
	i, err2 := strconv.Atoi(is)
	if err1 != nil || err2 != nil {
		return
	}
	first := -1
	if batched {
		if bytes.HasPrefix(m.Data, []byte(`{"type":"ack"`)) || bytes.HasPrefix(m.Data, []byte(`{"type":"gap"`)) {
			return
		}
		id, _, _ := strings.Cut(bs, ".")
		if !bytes.HasPrefix(m.Data, []byte(`{"type"`)) && bytes.Contains(m.Data, []byte(`"batch":`)) {
			f, err := strconv.Atoi(id[strings.LastIndexByte(id, '-')+1:])
			if err != nil {
				return
			}
			first = f
		}
	}
	p.mu.Lock()
	if round == p.round {
		switch {
		case first >= 0:
			if first < len(p.done) && p.done[first] == nil {
				p.done[first] = m
			}
		case i >= 0 && i < len(p.got) && p.got[i] == nil:
			p.got[i] = m
		}
	}
	p.mu.Unlock()
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

// ack is the current round's reply to row i, nil while none came.
func (p *publisher) ack(i int) *nats.Msg {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i < len(p.got) {
		return p.got[i]
	}
	return nil
}

// batchAck is the current round's PubAck of the fast batch whose first row
// has index first, nil while none came.
func (p *publisher) batchAck(first int) *nats.Msg {
	p.mu.Lock()
	defer p.mu.Unlock()
	if first < len(p.done) {
		return p.done[first]
	}
	return nil
}

// batchPos places a row in a fast batch: its batch's first row's index in
// the round, and its place k (1…n) among the batch's n rows; n 0 for a row
// published on its own.
type batchPos struct{ first, k, n int }

// batchFlow is the flow control asked of the server: a flow message every
// batchFlow rows persisted (the server takes at most 500), none inside a
// round's batch of at most Relay.Batch rows.
const batchFlow = 500

// send publishes row i of round (with id as its Nats-Msg-Id and, when
// chained, expect as its Nats-Expected-Last-Sequence; traceparent when not
// empty), its PubAck to come back as the round's reply i. In a fast batch
// (pos.n > 0; nats-server 2.14+, a stream with allow_batched) the reply
// subject also carries what the server reads of the batch:
// "<inbox><round>.<i>.<tag>-<round>-<first>.<flow>.fail.<k>.<op>.$FI"
// (gap mode fail: a row the batch lacks, or one refused, ends it, and its
// PubAck counts the rows stored up to there); its last row commits it.
func (p *publisher) send(round uint64, i int, subject string, data []byte, id string, chained bool, expect uint64, traceparent string, pos batchPos) error {
	p.mu.Lock()
	p.grow(i + 1)
	p.mu.Unlock()
	b := append(p.reply[:0], p.inbox...)
	b = strconv.AppendUint(b, round, 10)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(i), 10)
	if pos.n > 0 {
		b = append(b, '.')
		b = append(b, p.tag...)
		b = append(b, '-')
		b = strconv.AppendUint(b, round, 10)
		b = append(b, '-')
		b = strconv.AppendInt(b, int64(pos.first), 10)
		b = append(b, '.')
		b = strconv.AppendInt(b, batchFlow, 10)
		b = append(b, ".fail."...)
		b = strconv.AppendInt(b, int64(pos.k), 10)
		switch {
		case pos.k == pos.n:
			b = append(b, ".2.$FI"...) // commit
		case pos.k == 1:
			b = append(b, ".0.$FI"...) // start
		default:
			b = append(b, ".1.$FI"...) // append
		}
	}
	p.reply = b
	h := p.msg.Header
	p.id[0] = id
	h[jetstream.MsgIDHeader] = p.id
	if chained {
		p.expect[0] = strconv.FormatUint(expect, 10)
		h[jetstream.ExpectedLastSeqHeader] = p.expect
	} else {
		delete(h, jetstream.ExpectedLastSeqHeader)
	}
	if traceparent != "" {
		h.Set(telemetry.HeaderTraceparent, traceparent)
	} else {
		delete(h, telemetry.HeaderTraceparent)
	}
	p.msg.Subject, p.msg.Reply, p.msg.Data = subject, string(b), data
	err := p.publish(&p.msg)
	p.msg.Data = nil
	return err
}

// errNoStream is a publish no stream answered (no responders).
var errNoStream = errors.New("no response from stream")

// pubAck is what a relay reads of a PubAck.
type pubAck struct {
	stream    []byte
	seq       uint64
	duplicate bool
	// A fast batch's PubAck: batch, and count, its rows stored (or found
	// stored already: duplicates) from the first; seq is then the stream
	// sequence of the last row it stored, 0 if none.
	batch bool
	count uint64
}

// parseAck reads a reply: the PubAck, or the error it carries (a
// *jetstream.APIError for the server's refusals).
func parseAck(m *nats.Msg) (pubAck, error) {
	if len(m.Data) == 0 {
		if m.Header.Get("Status") == "503" {
			return pubAck{}, errNoStream
		}
		return pubAck{}, jetstream.ErrInvalidJSAck
	}
	if a, ok := fastAck(m.Data); ok {
		return a, nil
	}
	var r struct {
		Error     *jetstream.APIError `json:"error"`
		Stream    string              `json:"stream"`
		Seq       uint64              `json:"seq"`
		Duplicate bool                `json:"duplicate"`
		Batch     string              `json:"batch"`
		Count     uint64              `json:"count"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return pubAck{}, jetstream.ErrInvalidJSAck
	}
	if r.Error != nil {
		return pubAck{}, r.Error
	}
	if r.Stream == "" {
		return pubAck{}, jetstream.ErrInvalidJSAck
	}
	return pubAck{stream: []byte(r.Stream), seq: r.Seq, duplicate: r.Duplicate, batch: r.Batch != "", count: r.Count}, nil
}

// fastAck reads the server's success forms, {"stream":"S","seq":N},
// {"stream":"S","domain":"D","seq":N} and {"stream":"S","seq":N,"duplicate": true},
// each also with ,"batch":"B","count":N before its "}" (a fast batch's);
// false for anything else (errors, other fields), which encoding/json reads.
func fastAck(d []byte) (pubAck, bool) {
	var a pubAck
	rest, ok := bytes.CutPrefix(d, []byte(`{"stream":"`))
	if !ok {
		return a, false
	}
	end := bytes.IndexByte(rest, '"')
	if end <= 0 || bytes.IndexByte(rest[:end], '\\') >= 0 {
		return a, false
	}
	a.stream, rest = rest[:end], rest[end+1:]
	if r, ok := bytes.CutPrefix(rest, []byte(`,"domain":"`)); ok {
		end := bytes.IndexByte(r, '"')
		if end < 0 || bytes.IndexByte(r[:end], '\\') >= 0 {
			return a, false
		}
		rest = r[end+1:]
	}
	rest, ok = bytes.CutPrefix(rest, []byte(`,"seq":`))
	if !ok {
		return a, false
	}
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	if n == 0 || n > 19 { // 19 digits always fit a uint64
		return a, false
	}
	for _, c := range rest[:n] {
		a.seq = a.seq*10 + uint64(c-'0')
	}
	rest = rest[n:]
	if r, ok := bytes.CutPrefix(rest, []byte(`,"duplicate": true`)); ok {
		a.duplicate, rest = true, r
	} else if r, ok := bytes.CutPrefix(rest, []byte(`,"duplicate":true`)); ok {
		a.duplicate, rest = true, r
	}
	if r, ok := bytes.CutPrefix(rest, []byte(`,"batch":"`)); ok {
		end := bytes.IndexByte(r, '"')
		if end <= 0 || bytes.IndexByte(r[:end], '\\') >= 0 {
			return a, false
		}
		r, ok = bytes.CutPrefix(r[end+1:], []byte(`,"count":`))
		if !ok {
			return a, false
		}
		n := 0
		for n < len(r) && r[n] >= '0' && r[n] <= '9' {
			n++
		}
		if n == 0 || n > 19 {
			return a, false
		}
		for _, c := range r[:n] {
			a.count = a.count*10 + uint64(c-'0')
		}
		a.batch, rest = true, r[n:]
	}
	return a, string(rest) == "}"
}
