package gateway

import (
	"bytes"
	"errors"
	"io"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/proto"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
)

// apiMarshaler is the grpc-gateway mux's JSON: runtime.JSONPb (newMarshaler),
// with two shortcuts on the send path that hold to it byte for byte
// (whitespace aside) and give way to it for anything else:
//
//   - a Message or Conversation answer is written by appendJSON (as event
//     data is) instead of protojson, which sorted the fields of every
//     message it wrote (a third of the gateway's own CPU of a send);
//   - a send's body (CreateMessageRequest) or a markRead's
//     (MarkConversationReadRequest) in its everyday shape is decoded by
//     decodeCreateMessage or decodeMarkRead; any other body, and every body
//     they decline, goes to JSONPb's decoder, so that what is refused is
//     refused by protojson with the same words (FuzzDecodeCreateMessage,
//     FuzzDecodeMarkRead).
type apiMarshaler struct{ *runtime.JSONPb }

// Marshal implements runtime.Marshaler.
func (m apiMarshaler) Marshal(v any) ([]byte, error) {
	switch v := v.(type) {
	case *deliveryv1.Message:
		if out, ok := marshalResource(v); ok {
			return out, nil
		}
	case *conversationv1.Conversation:
		if out, ok := marshalResource(v); ok {
			return out, nil
		}
	}
	return m.JSONPb.Marshal(v)
}

// marshalResource is appendJSON for a non-nil resource.
func marshalResource(m proto.Message) ([]byte, bool) {
	r := m.ProtoReflect()
	if !r.IsValid() {
		return nil, false
	}
	return appendJSON(make([]byte, 0, 512), r)
}

// NewDecoder implements runtime.Marshaler.
func (m apiMarshaler) NewDecoder(r io.Reader) runtime.Decoder {
	return &apiDecoder{r: r, jsonpb: m.JSONPb}
}

// apiDecoder decodes one request body (grpc-gateway makes one per request).
type apiDecoder struct {
	r      io.Reader
	jsonpb *runtime.JSONPb
}

// fastBodyLimit is the largest send body decodeCreateMessage reads; a larger
// one (a 10,000-character text in escapes) goes to JSONPb as it streams.
const fastBodyLimit = 64 << 10

// Decode implements runtime.Decoder.
func (d *apiDecoder) Decode(v any) error {
	switch v.(type) {
	case *deliveryv1.CreateMessageRequest, *conversationv1.MarkConversationReadRequest:
	default:
		return d.jsonpb.NewDecoder(d.r).Decode(v)
	}
	body, rest := readUpTo(d.r, fastBodyLimit, make([]byte, 0, 512))
	return decodeRead(body, rest, v, d.jsonpb)
}

// decodeRead decodes a request body of which readUpTo read body (rest what
// is left): decodeFast, or JSONPb on exactly the bytes it would have read.
// Neither keeps body: every string decoded is a copy.
func decodeRead(body []byte, rest io.Reader, v any, jsonpb *runtime.JSONPb) error {
	if rest == nil && decodeFast(body, v) {
		return nil
	}
	if rest == nil {
		rest = eofReader{}
	}
	return jsonpb.NewDecoder(io.MultiReader(bytes.NewReader(body), rest)).Decode(v)
}

// decodeFast decodes body into a request the fast path knows.
func decodeFast(body []byte, v any) bool {
	switch req := v.(type) {
	case *deliveryv1.CreateMessageRequest:
		return decodeCreateMessage(body, req)
	case *conversationv1.MarkConversationReadRequest:
		return decodeMarkRead(body, req)
	}
	return false
}

// readUpTo reads r to its end if that comes within limit bytes, appending to
// body: rest is then nil. Otherwise rest is what remains to read after body:
// r, or a reader that gives the read error again.
func readUpTo(r io.Reader, limit int, body []byte) (_ []byte, rest io.Reader) {
	for len(body) < limit {
		if len(body) == cap(body) {
			body = append(body, 0)[:len(body)]
		}
		n, err := r.Read(body[len(body):min(cap(body), limit)])
		body = body[:len(body)+n]
		if errors.Is(err, io.EOF) {
			return body, nil
		}
		if err != nil {
			return body, errReader{err}
		}
	}
	return body, r
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// decodeCreateMessage decodes a send's body when it is exactly one JSON
// object (whitespace around it allowed) of the fields "parent", "text",
// "requestId", "sensitive" and "attachments", none twice, none null, with
// strings whose escapes are of the Basic Multilingual Plane or pairs of
// surrogates, and valid UTF-8. It reports false for anything else, having
// perhaps written part of req: the caller then decodes with protojson, which
// resets req first.
func decodeCreateMessage(b []byte, req *deliveryv1.CreateMessageRequest) bool {
	req.Reset()
	return decodeObject(b, func(p *jsonScanner, key string) (bit uint8, ok bool) {
		switch key {
		case "parent":
			req.Parent, ok = p.str()
			return 1, ok
		case "text":
			req.Text, ok = p.str()
			return 2, ok
		case "requestId":
			req.RequestId, ok = p.str()
			return 4, ok
		case "sensitive":
			req.Sensitive, ok = p.boolean()
			return 8, ok
		case "attachments":
			req.Attachments, ok = p.strings()
			return 16, ok
		}
		return 0, false
	})
}

// decodeMarkRead decodes a markRead's body ({"upTo":"…"}; "name" too, which
// the path then sets) under decodeCreateMessage's rules.
func decodeMarkRead(b []byte, req *conversationv1.MarkConversationReadRequest) bool {
	req.Reset()
	return decodeObject(b, func(p *jsonScanner, key string) (bit uint8, ok bool) {
		switch key {
		case "name":
			req.Name, ok = p.str()
			return 1, ok
		case "upTo":
			req.UpTo, ok = p.str()
			return 2, ok
		}
		return 0, false
	})
}

// decodeObject reads b as exactly one JSON object (whitespace around it
// allowed) whose every value field reads: it returns the key's bit (each
// key once) and whether its value was read. False for anything else.
func decodeObject(b []byte, field func(p *jsonScanner, key string) (bit uint8, ok bool)) bool {
	p := jsonScanner{b: b}
	p.space()
	if !p.byte('{') {
		return false
	}
	var seen uint8
	p.space()
	if !p.byte('}') {
		for {
			p.space()
			key, ok := p.plainKey()
			if !ok {
				return false
			}
			p.space()
			if !p.byte(':') {
				return false
			}
			p.space()
			bit, ok := field(&p, key)
			if !ok || seen&bit != 0 {
				return false
			}
			seen |= bit
			p.space()
			if p.byte('}') {
				break
			}
			if !p.byte(',') {
				return false
			}
		}
	}
	p.space()
	return p.i == len(p.b)
}

// jsonScanner reads the JSON that decodeCreateMessage accepts.
type jsonScanner struct {
	b []byte
	i int
}

func (p *jsonScanner) space() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsonScanner) byte(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// plainKey is an object key without escapes (the names decodeCreateMessage
// and decodeMarkRead know have none).
func (p *jsonScanner) plainKey() (string, bool) {
	if !p.byte('"') {
		return "", false
	}
	start := p.i
	for p.i < len(p.b) {
		c := p.b[p.i]
		if c == '"' {
			key := p.b[start:p.i]
			p.i++
			switch string(key) { // no allocation: compared, then a constant returned
			case "parent":
				return "parent", true
			case "text":
				return "text", true
			case "requestId":
				return "requestId", true
			case "sensitive":
				return "sensitive", true
			case "attachments":
				return "attachments", true
			case "name":
				return "name", true
			case "upTo":
				return "upTo", true
			}
			return "", false
		}
		if c == '\\' || c < ' ' || c >= utf8.RuneSelf {
			return "", false
		}
		p.i++
	}
	return "", false
}

func (p *jsonScanner) boolean() (bool, bool) {
	switch {
	case bytes.HasPrefix(p.b[p.i:], []byte("true")):
		p.i += 4
		return true, true
	case bytes.HasPrefix(p.b[p.i:], []byte("false")):
		p.i += 5
		return false, true
	}
	return false, false
}

// strings is an array of strings (empty included).
func (p *jsonScanner) strings() ([]string, bool) {
	if !p.byte('[') {
		return nil, false
	}
	p.space()
	if p.byte(']') {
		return nil, true
	}
	var out []string
	for {
		p.space()
		s, ok := p.str()
		if !ok {
			return nil, false
		}
		out = append(out, s)
		p.space()
		if p.byte(']') {
			return out, true
		}
		if !p.byte(',') {
			return nil, false
		}
	}
}

// str is a JSON string: valid UTF-8, no control characters, escapes as JSON
// defines them; a \u escape of a surrogate must be the first of a pair.
func (p *jsonScanner) str() (string, bool) {
	if !p.byte('"') {
		return "", false
	}
	start := p.i
	// Most strings have no escape: one copy out of the body.
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			s := p.b[start:p.i]
			p.i++
			if !utf8.Valid(s) {
				return "", false
			}
			return string(s), true
		case c == '\\':
			return p.escaped(start)
		case c < ' ':
			return "", false
		}
		p.i++
	}
	return "", false
}

// escaped finishes a string that starts at start and has an escape at p.i.
func (p *jsonScanner) escaped(start int) (string, bool) {
	out := make([]byte, 0, p.i-start+64)
	out = append(out, p.b[start:p.i]...)
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			p.i++
			if !utf8.Valid(out) {
				return "", false
			}
			return string(out), true
		case c < ' ':
			return "", false
		case c != '\\':
			out = append(out, c)
			p.i++
			continue
		}
		if p.i+1 >= len(p.b) {
			return "", false
		}
		e := p.b[p.i+1]
		p.i += 2
		switch e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := p.hex4()
			if !ok {
				return "", false
			}
			if utf16.IsSurrogate(r) {
				if !p.byte('\\') || !p.byte('u') {
					return "", false
				}
				r2, ok := p.hex4()
				if !ok {
					return "", false
				}
				r = utf16.DecodeRune(r, r2)
				if r == utf8.RuneError {
					return "", false
				}
			}
			out = utf8.AppendRune(out, r)
		default:
			return "", false
		}
	}
	return "", false
}

func (p *jsonScanner) hex4() (rune, bool) {
	if p.i+4 > len(p.b) {
		return 0, false
	}
	var r rune
	for _, c := range p.b[p.i : p.i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	p.i += 4
	return r, true
}
