package gateway

import (
	"encoding/base64"
	"strconv"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// appendJSON appends m as the API's JSON (protojson with EmitUnpopulated and
// JSON field names, as the gateway's marshaler writes it) for the shapes the
// event resources are made of: scalars, enums, strings, bytes, nested
// messages, repeated fields and google.protobuf.Timestamp. It reports false
// for anything else (maps, floats, other well-known types, invalid UTF-8, a
// timestamp out of range), and the caller then uses protojson itself, which
// also gives the error.
//
// Every event on every stream is rendered once per kind of viewer, and
// protojson spent most of its time sorting fields and in closures;
// this walks the fields in declaration order, which is protojson's order.
// TestAppendJSONIsProtojson holds the two to the same output.
func appendJSON(out []byte, m protoreflect.Message) ([]byte, bool) {
	if m.Descriptor().FullName() == "google.protobuf.Timestamp" {
		return appendTimestamp(out, m)
	}
	if isWellKnown(m.Descriptor()) {
		return out, false
	}
	fds := m.Descriptor().Fields()
	out = append(out, '{')
	first := true
	for i := range fds.Len() {
		fd := fds.Get(i)
		has := m.Has(fd)
		if !has && fd.ContainingOneof() != nil {
			continue // protojson leaves an unset oneof out
		}
		if fd.IsMap() || fd.IsExtension() {
			return out, false
		}
		if !first {
			out = append(out, ',')
		}
		first = false
		out = append(out, '"')
		out = append(out, fd.JSONName()...) // lowerCamel ASCII: nothing to escape
		out = append(out, '"', ':')
		var ok bool
		switch {
		case fd.IsList():
			l := m.Get(fd).List()
			out = append(out, '[')
			for j := range l.Len() {
				if j > 0 {
					out = append(out, ',')
				}
				if out, ok = appendSingular(out, fd, l.Get(j)); !ok {
					return out, false
				}
			}
			out = append(out, ']')
		case !has && fd.HasPresence():
			out = append(out, "null"...)
		default:
			if out, ok = appendSingular(out, fd, m.Get(fd)); !ok {
				return out, false
			}
		}
	}
	return append(out, '}'), true
}

// isWellKnown: a google.protobuf message, which protojson writes in its own
// form (only Timestamp is handled here).
func isWellKnown(d protoreflect.MessageDescriptor) bool {
	return d.ParentFile() != nil && d.ParentFile().Package() == "google.protobuf"
}

func appendSingular(out []byte, fd protoreflect.FieldDescriptor, v protoreflect.Value) ([]byte, bool) {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return strconv.AppendBool(out, v.Bool()), true
	case protoreflect.StringKind:
		return appendJSONString(out, v.String())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return strconv.AppendInt(out, v.Int(), 10), true
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return strconv.AppendUint(out, v.Uint(), 10), true
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		out = append(out, '"')
		return append(strconv.AppendInt(out, v.Int(), 10), '"'), true
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		out = append(out, '"')
		return append(strconv.AppendUint(out, v.Uint(), 10), '"'), true
	case protoreflect.BytesKind:
		out = append(out, '"')
		return append(base64.StdEncoding.AppendEncode(out, v.Bytes()), '"'), true
	case protoreflect.EnumKind:
		if fd.Enum().FullName() == "google.protobuf.NullValue" {
			return out, false
		}
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			out = append(out, '"')
			return append(append(out, ev.Name()...), '"'), true
		}
		return strconv.AppendInt(out, int64(v.Enum()), 10), true
	case protoreflect.MessageKind:
		return appendJSON(out, v.Message())
	default: // floats (NaN, exponents), groups
		return out, false
	}
}

// appendJSONString is protojson's string: `"`, `\` and control characters
// escaped (\b \f \n \r \t, else \u00XX), everything else as it is; invalid
// UTF-8 is refused.
func appendJSONString(out []byte, s string) ([]byte, bool) {
	out = append(out, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				return out, false
			}
			i += n
			continue
		}
		if c >= ' ' && c != '"' && c != '\\' {
			i++
			continue
		}
		out = append(out, s[start:i]...)
		switch c {
		case '"', '\\':
			out = append(out, '\\', c)
		case '\b':
			out = append(out, '\\', 'b')
		case '\f':
			out = append(out, '\\', 'f')
		case '\n':
			out = append(out, '\\', 'n')
		case '\r':
			out = append(out, '\\', 'r')
		case '\t':
			out = append(out, '\\', 't')
		default:
			const hex = "0123456789abcdef"
			out = append(out, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
		start = i
	}
	out = append(out, s[start:]...)
	return append(out, '"'), true
}

// Timestamp range protojson accepts: 0001-01-01T00:00:00Z to
// 9999-12-31T23:59:59Z.
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
)

// appendTimestamp is protojson's Timestamp: RFC 3339 in UTC with 0, 3, 6 or 9
// fractional digits.
func appendTimestamp(out []byte, m protoreflect.Message) ([]byte, bool) {
	fds := m.Descriptor().Fields()
	return appendTimestampParts(out, m.Get(fds.ByNumber(1)).Int(), m.Get(fds.ByNumber(2)).Int())
}

// appendTimestampParts is appendTimestamp of a Timestamp's seconds and nanos.
func appendTimestampParts(out []byte, secs, nanos int64) ([]byte, bool) {
	if secs < minTimestampSeconds || secs > maxTimestampSeconds || nanos < 0 || nanos > 999_999_999 {
		return out, false
	}
	out = append(out, '"')
	out = time.Unix(secs, 0).UTC().AppendFormat(out, "2006-01-02T15:04:05")
	if nanos != 0 {
		digits, n := 9, nanos
		switch {
		case n%1_000_000 == 0:
			digits, n = 3, n/1_000_000
		case n%1_000 == 0:
			digits, n = 6, n/1_000
		}
		out = append(out, '.')
		var buf [9]byte
		for i := digits - 1; i >= 0; i-- {
			buf[i] = byte('0' + n%10)
			n /= 10
		}
		out = append(out, buf[:digits]...)
	}
	return append(out, 'Z', '"'), true
}
