package gateway

import (
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// The hub reads every event of its streams; what it needs of an event's
// EventMeta (field 1 of every event it streams) is the practice, the time
// and the action. Unmarshalling the whole EventMeta made an object for it,
// one for its time and one string for each of its fields (id, actor, role,
// action, resource, detail) per event, none of them kept: eventHead reads
// the three from the wire instead, and the event's other fields (the
// message, the thread) are unmarshalled from the bytes after it.

// eventHead is what the hub keeps of an event's EventMeta.
type eventHead struct {
	practice, action string
	time             time.Time // zero when the meta has none
}

// splitEventMeta reads the EventMeta of an event encoded as Go's protobuf
// encodes it (the meta, field 1, first and once) and returns the bytes of
// the event's other fields. ok is false for any other shape, and for
// anything proto.Unmarshal would refuse in the meta (a wrong wire type, a
// string that is not UTF-8): the caller then unmarshals the whole event,
// which decides as before. practice is the practice the caller expects
// (its string is used instead of a copy when the meta's is the same).
func splitEventMeta(data []byte, practice string) (h eventHead, rest []byte, ok bool) {
	num, typ, n := protowire.ConsumeTag(data)
	if n < 0 || num != 1 || typ != protowire.BytesType {
		return eventHead{}, nil, false
	}
	meta, m := protowire.ConsumeBytes(data[n:])
	if m < 0 {
		return eventHead{}, nil, false
	}
	rest = data[n+m:]
	// A second meta would be merged into the first: not this shape.
	for b := rest; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num == 1 {
			return eventHead{}, nil, false
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return eventHead{}, nil, false
		}
		b = b[n+m:]
	}
	var practiceB, actionB []byte
	seenTime := false
	for b := meta; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return eventHead{}, nil, false
		}
		b = b[n:]
		switch num {
		case 1, 3, 4, 5, 6, 7, 9: // strings
			if typ != protowire.BytesType {
				return eventHead{}, nil, false
			}
			v, m := protowire.ConsumeBytes(b)
			if m < 0 || !utf8.Valid(v) {
				return eventHead{}, nil, false
			}
			switch num {
			case 3:
				practiceB = v
			case 6:
				actionB = v
			}
			b = b[m:]
		case 2: // time
			if typ != protowire.BytesType || seenTime {
				return eventHead{}, nil, false
			}
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return eventHead{}, nil, false
			}
			t, ok := timestampOf(v)
			if !ok {
				return eventHead{}, nil, false
			}
			h.time, seenTime = t, true
			b = b[m:]
		case 8: // outcome
			if typ != protowire.VarintType {
				return eventHead{}, nil, false
			}
			_, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return eventHead{}, nil, false
			}
			b = b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return eventHead{}, nil, false
			}
			b = b[m:]
		}
	}
	if string(practiceB) == practice {
		h.practice = practice
	} else {
		h.practice = string(practiceB)
	}
	h.action = internAction(actionB)
	return h, rest, true
}

// timestampOf is the time of an encoded google.protobuf.Timestamp, as
// timestamppb's AsTime gives it.
func timestampOf(b []byte) (time.Time, bool) {
	var secs int64
	var nanos int32
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return time.Time{}, false
		}
		b = b[n:]
		if (num == 1 || num == 2) && typ != protowire.VarintType {
			return time.Time{}, false
		}
		if num == 1 || num == 2 {
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return time.Time{}, false
			}
			if num == 1 {
				secs = int64(v)
			} else {
				nanos = int32(v)
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return time.Time{}, false
		}
		b = b[m:]
	}
	return time.Unix(secs, int64(nanos)).UTC(), true
}

// internAction is the action b, without a copy for the ones the hub
// compares (convview.go).
func internAction(b []byte) string {
	switch string(b) {
	case "":
		return ""
	case actionActivity:
		return actionActivity
	case actionAssign:
		return actionAssign
	case actionArchive:
		return actionArchive
	}
	return string(b)
}

// subjectTenant is the first two tokens after the base of a subject in the
// tenant form (natsx.Tokens' first two, without its slice): n is how many
// there are (0 for the pre-tenant form, at most 2).
func subjectTenant(subject string) (t0, t1 string, n int) {
	b := natsx.Base(subject)
	if b == "" || len(b) == len(subject) {
		return "", "", 0
	}
	t0, rest, more := strings.Cut(subject[len(b)+1:], ".")
	if !more {
		return t0, "", 1
	}
	t1, _, _ = strings.Cut(rest, ".")
	return t0, t1, 2
}

// ackInfo is what the hub reads of a JetStream message's ack subject.
type ackInfo struct {
	stream, consumer, pending uint64
	timestamp                 time.Time
}

// parseAck reads reply, a JetStream ack subject, as jetstream.Msg's
// Metadata does, without allocating its MsgMetadata:
//
//	$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>
//	$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>[.<token>...]
func parseAck(reply string) (ackInfo, bool) {
	rest, ok := strings.CutPrefix(reply, "$JS.ACK.")
	if !ok {
		return ackInfo{}, false
	}
	tokens := strings.Count(reply, ".") + 1
	switch {
	case tokens == 9:
	case tokens >= 11:
		for range 2 { // domain, account hash
			_, rest, _ = strings.Cut(rest, ".")
		}
	default:
		return ackInfo{}, false
	}
	var t [7]string // stream, consumer, delivered, sseq, cseq, tm, pending
	for i := range t {
		t[i], rest, _ = strings.Cut(rest, ".")
	}
	return ackInfo{stream: parseNum(t[3]), consumer: parseNum(t[4]), pending: parseNum(t[6]),
		timestamp: time.Unix(0, int64(parseNum(t[5])))}, true
}

// parseNum is a decimal number, 0 when d is not one (as nats.go reads
// the ack subject's numbers).
func parseNum(d string) (n uint64) {
	for i := 0; i < len(d); i++ {
		c := d[i]
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + uint64(c-'0')
	}
	return n
}
