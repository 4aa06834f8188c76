package gateway

import (
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
)

// The hub reads every event of its streams; what it needs of an event's
// EventMeta is the practice, the time and the action, which decodeEvent
// reads from the wire (eventwire.SplitMeta), unmarshalling the event's
// other fields (the message, the thread) from the bytes after it. The ack
// subject and the subject's tenant tokens are read here without the
// allocations of nats.go's Metadata.

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

// messageEventHead reads a MessageCreated or MessageUpdated of one message
// without its meta (eventwire.SplitMeta's rest): raw is its Message's encoding, patient its
// patient, and head a Message with only the fields the hub routes and
// classifies by (name, sender, sensitive, locked, seq). ok is false for any
// shape proto.Unmarshal might read otherwise (a field twice, which it
// merges or keeps the last of; another wire type; a string that is not
// UTF-8; a malformed encoding anywhere in the Message): the caller then
// unmarshals the event whole, as before.
func messageEventHead(rest []byte) (raw []byte, patient string, head *deliveryv1.Message, ok bool) {
	f, ok := messageEventFields(rest)
	if !ok || f.messages != 1 || len(f.batch) > 0 {
		return nil, "", nil, false
	}
	if head, ok = messageHead(f.message); !ok {
		return nil, "", nil, false
	}
	return f.message, f.patient, head, true
}

// messageBatchHead is messageEventHead for a MessageUpdated that carries
// several messages (field 4, messages: a receipt advance's echo) and no
// message (field 2): raws are their encodings and heads what the hub
// routes by, in order. ok is false for any other shape (the caller then
// unmarshals the event whole).
func messageBatchHead(rest []byte) (raws [][]byte, patient string, heads []*deliveryv1.Message, ok bool) {
	f, ok := messageEventFields(rest)
	if !ok || f.messages != 0 || len(f.batch) == 0 {
		return nil, "", nil, false
	}
	heads = make([]*deliveryv1.Message, len(f.batch))
	for i, raw := range f.batch {
		if heads[i], ok = messageHead(raw); !ok {
			return nil, "", nil, false
		}
	}
	return f.batch, f.patient, heads, true
}

// eventFields are the fields of a MessageCreated or MessageUpdated the hub
// reads (messageEventFields).
type eventFields struct {
	message  []byte   // field 2's encoding (the last, if messages > 1)
	messages int      // how many times field 2 came
	batch    [][]byte // field 4's encodings, in order (MessageUpdated.messages)
	patient  string   // field 3
}

// messageEventFields walks a MessageCreated or MessageUpdated without its
// meta (eventwire.SplitMeta's rest) once, for messageEventHead and
// messageBatchHead. ok is false for a field 2, 3 or 4 that is not length-
// delimited, a patient given twice or not UTF-8, or a malformed encoding.
func messageEventFields(rest []byte) (f eventFields, ok bool) {
	seenPatient := false
	for b := rest; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return eventFields{}, false
		}
		b = b[n:]
		switch num {
		case 2, 3, 4:
			if typ != protowire.BytesType || (num == 3 && seenPatient) {
				return eventFields{}, false
			}
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return eventFields{}, false
			}
			switch num {
			case 2:
				f.message = v
				f.messages++
			case 3:
				if !utf8.Valid(v) {
					return eventFields{}, false
				}
				f.patient, seenPatient = string(v), true
			default:
				f.batch = append(f.batch, v)
			}
			b = b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return eventFields{}, false
			}
			b = b[m:]
		}
	}
	return f, true
}

// messageHead reads a Message's name, sender, sensitive, locked and seq
// from its encoding raw (messageEventHead's rules).
func messageHead(raw []byte) (*deliveryv1.Message, bool) {
	head := &deliveryv1.Message{}
	var seen uint32
	for b := raw; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return nil, false
		}
		v := b[n : n+m]
		b = b[n+m:]
		switch num {
		case 1, 2, 5, 6, 14:
		default:
			continue
		}
		if seen&(1<<num) != 0 {
			return nil, false
		}
		seen |= 1 << num
		switch num {
		case 1, 2: // name, sender
			s, k := protowire.ConsumeBytes(v)
			if typ != protowire.BytesType || k < 0 || !utf8.Valid(s) {
				return nil, false
			}
			if num == 1 {
				head.Name = string(s)
			} else {
				head.Sender = string(s)
			}
		default: // sensitive, locked, seq
			x, k := protowire.ConsumeVarint(v)
			if typ != protowire.VarintType || k < 0 {
				return nil, false
			}
			switch num {
			case 5:
				head.Sensitive = x != 0
			case 6:
				head.Locked = x != 0
			default:
				head.Seq = int32(x)
			}
		}
	}
	return head, true
}
