// Package eventwire reads what a consumer needs of an event's EventMeta
// (field 1 of every clinicchat event) from its encoding, without
// unmarshalling the meta: unmarshalling it made an object for the meta, one
// for its time and a string for each of its fields (id, actor, role,
// action, resource, detail) per event, most of them never read.
package eventwire

import (
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
)

// Event is a clinicchat event: its EventMeta is field 1.
type Event interface {
	proto.Message
	GetMeta() *typev1.EventMeta
}

// Unmarshal unmarshals data into ev and returns what SplitMeta reads of
// its meta: read from the wire when the event has SplitMeta's shape (ev's
// meta is then left unset), else ev is unmarshalled whole and the Meta
// taken from its meta. practice and actions are SplitMeta's.
func Unmarshal(data []byte, ev Event, practice string, actions ...string) (Meta, error) {
	h, rest, split := SplitMeta(data, practice, actions...)
	if !split {
		rest = data
	}
	if err := proto.Unmarshal(rest, ev); err != nil {
		return Meta{}, err
	}
	if !split {
		m := ev.GetMeta()
		h = Meta{Practice: m.GetPractice(), Action: m.GetAction()}
		if m.GetTime() != nil {
			h.Time = m.GetTime().AsTime()
		}
	}
	return h, nil
}

// Meta is what SplitMeta reads of an event's EventMeta.
type Meta struct {
	// Practice and Action are the meta's practice and action.
	Practice, Action string
	// Time is the meta's time, zero when it has none.
	Time time.Time
}

// SplitMeta reads the EventMeta of an event encoded as Go's protobuf
// encodes it (the meta, field 1, first and once) and returns the bytes of
// the event's other fields, which unmarshal to the event without its meta.
// ok is false for any other shape, and for anything in the meta that
// proto.Unmarshal would refuse or read otherwise (a string that is not
// UTF-8, a field of another wire type): the caller then unmarshals the
// whole event, which decides as before.
//
// practice is the practice the caller expects and actions the actions it
// compares: when the meta's are one of them, that string is used instead
// of a copy.
func SplitMeta(data []byte, practice string, actions ...string) (h Meta, rest []byte, ok bool) {
	num, typ, n := protowire.ConsumeTag(data)
	if n < 0 || num != 1 || typ != protowire.BytesType {
		return Meta{}, nil, false
	}
	meta, m := protowire.ConsumeBytes(data[n:])
	if m < 0 {
		return Meta{}, nil, false
	}
	rest = data[n+m:]
	// A second meta would be merged into the first: not this shape.
	for b := rest; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num == 1 {
			return Meta{}, nil, false
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return Meta{}, nil, false
		}
		b = b[n+m:]
	}
	var practiceB, actionB []byte
	seenTime := false
	for b := meta; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return Meta{}, nil, false
		}
		b = b[n:]
		switch num {
		case 1, 3, 4, 5, 6, 7, 9: // strings
			if typ != protowire.BytesType {
				return Meta{}, nil, false
			}
			v, m := protowire.ConsumeBytes(b)
			if m < 0 || !utf8.Valid(v) {
				return Meta{}, nil, false
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
				return Meta{}, nil, false
			}
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return Meta{}, nil, false
			}
			t, ok := timestampOf(v)
			if !ok {
				return Meta{}, nil, false
			}
			h.Time, seenTime = t, true
			b = b[m:]
		case 8: // outcome
			if typ != protowire.VarintType {
				return Meta{}, nil, false
			}
			_, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return Meta{}, nil, false
			}
			b = b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return Meta{}, nil, false
			}
			b = b[m:]
		}
	}
	h.Practice = intern(practiceB, practice)
	h.Action = intern(actionB, actions...)
	return h, rest, true
}

// timestampOf is the time of an encoded google.protobuf.Timestamp, as
// timestamppb's AsTime gives it.
func timestampOf(b []byte) (time.Time, bool) {
	secs, nanos, ok := TimestampParts(b)
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(secs, int64(nanos)).UTC(), true
}

// TimestampParts reads an encoded google.protobuf.Timestamp's seconds and
// nanos without unmarshalling it. ok is false for a malformed encoding, a
// field of the wrong wire type, or seconds or nanos given twice (which
// Unmarshal reads as the last): the caller then unmarshals, as for any
// shape it does not read.
func TimestampParts(b []byte) (secs int64, nanos int32, ok bool) {
	var seen [3]bool
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, 0, false
		}
		b = b[n:]
		if num == 1 || num == 2 {
			if typ != protowire.VarintType || seen[num] {
				return 0, 0, false
			}
			seen[num] = true
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return 0, 0, false
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
			return 0, 0, false
		}
		b = b[m:]
	}
	return secs, nanos, true
}

// intern is b as a string: one of known when it is one (no copy).
func intern(b []byte, known ...string) string {
	if len(b) == 0 {
		return ""
	}
	for _, k := range known {
		if string(b) == k {
			return k
		}
	}
	return string(b)
}
