package bench

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// messageFields reads message.name and message.status out of an event's
// data, {"message":{"name":…,"status":…,…}}, without decoding the rest
// (name and status are slices of data unless they needed unescaping):
// the stream reader does this for every event it reads, on the same cores
// as the server it measures, and encoding/json costs several times more.
// It scans the JSON without validating it beyond what it walks (the
// gateway writes valid JSON); ok is false when the data is not an object
// or message is not an object in it. FuzzMessageFields holds it to
// encoding/json on valid input.
func messageFields(data []byte) (name, status []byte, ok bool) {
	sc := jsonScanner{b: data}
	found := false
	if !sc.enter() {
		return nil, nil, false
	}
	for first := true; ; first = false {
		key, end, ok := sc.member(first)
		if !ok {
			return nil, nil, false
		}
		if end {
			break
		}
		// Keys match as encoding/json matches them: case-insensitively, the
		// last one winning (a second "message" adds to the first).
		if !bytes.EqualFold(key, []byte("message")) || sc.peek() != '{' {
			if !sc.skip() {
				return nil, nil, false
			}
			continue
		}
		found = true
		sc.enter()
		for first := true; ; first = false {
			key, end, ok := sc.member(first)
			switch {
			case !ok:
				return nil, nil, false
			case end:
			case bytes.EqualFold(key, []byte("name")):
				ok = sc.stringInto(&name)
			case bytes.EqualFold(key, []byte("status")):
				ok = sc.stringInto(&status)
			default:
				ok = sc.skip()
			}
			if !ok {
				return nil, nil, false
			}
			if end {
				break
			}
		}
	}
	if sc.space(); !found || sc.i != len(sc.b) {
		return nil, nil, false
	}
	return name, status, true
}

// objectString reads the string member key of the JSON object data without
// decoding the rest, matched as encoding/json matches keys
// (case-insensitively, the last one winning; null leaves it as it was);
// ok is false when data is not an object or the member's value is not a
// string or null (encoding/json's error then). FuzzObjectString holds it to
// encoding/json on valid input.
func objectString(data []byte, key string) (val []byte, ok bool) {
	sc := jsonScanner{b: data}
	if !sc.enter() {
		return nil, false
	}
	for first := true; ; first = false {
		k, end, ok := sc.member(first)
		switch {
		case !ok:
			return nil, false
		case end:
		case bytes.EqualFold(k, []byte(key)):
			ok = sc.stringInto(&val)
		default:
			ok = sc.skip()
		}
		if !ok {
			return nil, false
		}
		if end {
			break
		}
	}
	if sc.space(); sc.i != len(sc.b) {
		return nil, false
	}
	return val, true
}

// appendJSONString appends s as a JSON string: as it is between quotes
// when it is printable ASCII without a quote or backslash (request ids, the
// bench's texts), through encoding/json otherwise.
func appendJSONString(out []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			b, _ := json.Marshal(s) // a string always encodes
			return append(out, b...)
		}
	}
	out = append(out, '"')
	out = append(out, s...)
	return append(out, '"')
}

// jsonScanner walks JSON text; each method reports false on text it cannot walk.
type jsonScanner struct {
	b []byte
	i int
}

func (s *jsonScanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *jsonScanner) peek() byte {
	s.space()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// enter walks an object's '{'.
func (s *jsonScanner) enter() bool {
	if s.peek() != '{' {
		return false
	}
	s.i++
	return true
}

// member walks to the object's next member, its key and colon (the caller
// then walks its value), or past its '}' (end); first is whether it is the
// object's first.
func (s *jsonScanner) member(first bool) (key []byte, end, ok bool) {
	c := s.peek()
	switch {
	case c == '}':
		s.i++
		return nil, true, true
	case !first && c == ',':
		s.i++
		c = s.peek()
	case !first:
		return nil, false, false
	}
	if c != '"' {
		return nil, false, false
	}
	key, esc, ok := s.str()
	if !ok {
		return nil, false, false
	}
	if esc { // an escaped key: decode it properly
		var k string
		if json.Unmarshal(key, &k) != nil {
			return nil, false, false
		}
		key = []byte(k)
	} else {
		key = key[1 : len(key)-1]
	}
	if s.peek() != ':' {
		return nil, false, false
	}
	s.i++
	return key, false, true
}

// str walks a string and returns it with its quotes, and whether it holds
// an escape.
func (s *jsonScanner) str() (raw []byte, esc, ok bool) {
	start := s.i
	s.i++ // the opening quote
	for {
		j := bytes.IndexByte(s.b[s.i:], '"')
		if j < 0 {
			return nil, false, false
		}
		if k := bytes.IndexByte(s.b[s.i:s.i+j], '\\'); k >= 0 {
			esc = true
			s.i += k + 2 // the backslash and the character it escapes (\uXXXX's digits are plain)
			if s.i > len(s.b) {
				return nil, false, false
			}
			continue
		}
		s.i += j + 1
		return s.b[start:s.i], esc, true
	}
}

// stringInto walks a string value into *v (the text itself when it needs
// no unescaping), or a null (leaving *v as it is, as encoding/json does).
func (s *jsonScanner) stringInto(v *[]byte) bool {
	switch s.peek() {
	case '"':
		raw, esc, ok := s.str()
		if !ok {
			return false
		}
		if esc || !utf8.Valid(raw) { // let encoding/json unescape (and replace invalid UTF-8)
			var u string
			if json.Unmarshal(raw, &u) != nil {
				return false
			}
			*v = []byte(u)
			return true
		}
		*v = raw[1 : len(raw)-1]
		return true
	case 'n':
		return s.literal("null")
	}
	return false
}

func (s *jsonScanner) literal(lit string) bool {
	if !bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
		return false
	}
	s.i += len(lit)
	return true
}

// skip walks any one value.
func (s *jsonScanner) skip() bool {
	switch c := s.peek(); {
	case c == '"':
		_, _, ok := s.str()
		return ok
	case c == '{':
		s.i++
		for first := true; ; first = false {
			_, end, ok := s.member(first)
			if !ok {
				return false
			}
			if end {
				return true
			}
			if !s.skip() {
				return false
			}
		}
	case c == '[':
		s.i++
		if s.peek() == ']' {
			s.i++
			return true
		}
		for {
			if !s.skip() {
				return false
			}
			switch s.peek() {
			case ',':
				s.i++
			case ']':
				s.i++
				return true
			default:
				return false
			}
		}
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		start := s.i
		for s.i < len(s.b) && bytes.IndexByte([]byte("+-.eE0123456789"), s.b[s.i]) >= 0 {
			s.i++
		}
		return s.i > start
	}
	return false
}
