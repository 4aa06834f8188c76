package gateway

import (
	"encoding/base64"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/eventwire"
	"github.com/clinicchat/clinicchat/services/platform/policy/messageview"
)

// appendWireJSON appends the message of descriptor md encoded as data
// (protobuf's wire format) as appendJSON writes the decoded message, without
// decoding it: no message, string or timestamp is made. The hub renders a
// message event's Message this way from the event's own bytes (eventrender.go,
// renderMessage). It reports false for every shape it does not read exactly
// as proto.Unmarshal then appendJSON would — a singular field that occurs
// twice (Unmarshal merges or keeps the last), a wire type the field's kind
// does not have, packed or other repeated scalars, field numbers above 63,
// invalid UTF-8, and whatever appendJSON declines — and the caller then
// unmarshals and renders as before. Unknown fields are left out, as
// appendJSON leaves them.
//
// locked, when set (the top-level message only), renders the locked view of
// a deliveryv1.Message (messageview.Apply): locked true and no text,
// attachments or artifact; otherwise a Message is rendered with locked
// false, as Apply leaves it for a viewer it is not locked for.
// TestAppendWireJSONIsAppendJSON holds the two renders to the same output.
func appendWireJSON(out []byte, md protoreflect.MessageDescriptor, data []byte, view wireView) ([]byte, bool) {
	if view.locked && !lockedView.ok {
		return out, false
	}
	if md.FullName() == "google.protobuf.Timestamp" {
		return appendWireTimestamp(out, data)
	}
	if isWellKnown(md) || md.Syntax() != protoreflect.Proto3 {
		return out, false
	}
	// Where each singular field's value is (its bytes after the tag), and
	// which fields occur at all.
	var at [64][]byte
	var seen uint64
	for b := data; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return out, false
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return out, false
		}
		if num < 64 {
			fd := md.Fields().ByNumber(num)
			if fd != nil {
				if typ != wireType(fd) {
					return out, false
				}
				if !fd.IsList() && seen&(1<<num) != 0 {
					return out, false
				}
				at[num] = b[n : n+m]
			}
			seen |= 1 << num
		} else if md.Fields().ByNumber(num) != nil {
			return out, false
		}
		b = b[n+m:]
	}
	fds := md.Fields()
	out = append(out, '{')
	first := true
	for i := range fds.Len() {
		fd := fds.Get(i)
		num := fd.Number()
		has := num < 64 && seen&(1<<num) != 0
		if has && view.locked && view.strips(fd) {
			// Left out of the locked view, but read as Unmarshal would
			// (an event it refuses is refused here too).
			if _, ok := appendWireField(out, fd, data, at[num]); !ok {
				return out, false
			}
			has = false
		}
		if o := fd.ContainingOneof(); has && o != nil && !o.IsSynthetic() {
			for j := range o.Fields().Len() {
				if f := o.Fields().Get(j); f != fd && f.Number() < 64 && seen&(1<<f.Number()) != 0 {
					return out, false // Unmarshal keeps the last of a oneof
				}
			}
		}
		if !has && fd.ContainingOneof() != nil {
			continue
		}
		if fd.IsMap() || fd.IsExtension() {
			return out, false
		}
		if !first {
			out = append(out, ',')
		}
		first = false
		out = append(out, '"')
		out = append(out, fd.JSONName()...)
		out = append(out, '"', ':')
		var ok bool
		switch {
		case view.message && fd.Name() == "locked" && fd.Kind() == protoreflect.BoolKind:
			out = strconv.AppendBool(out, view.locked)
		case fd.IsList() && !has:
			out = append(out, '[', ']')
		case !has && fd.HasPresence():
			out = append(out, "null"...)
		case !has:
			if out, ok = appendSingular(out, fd, fd.Default()); !ok {
				return out, false
			}
		default:
			if out, ok = appendWireField(out, fd, data, at[num]); !ok {
				return out, false
			}
		}
	}
	return append(out, '}'), true
}

// appendWireField appends the value of fd, a field present in data: v is
// its (last) value's encoding after the tag; a list's every element is
// read from data.
func appendWireField(out []byte, fd protoreflect.FieldDescriptor, data, v []byte) ([]byte, bool) {
	if !fd.IsList() {
		return appendWireValue(out, fd, v)
	}
	if k := fd.Kind(); k != protoreflect.MessageKind && k != protoreflect.StringKind && k != protoreflect.BytesKind {
		return out, false // packed or unpacked scalars: not read here
	}
	out = append(out, '[')
	j := 0
	for b := data; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		m := protowire.ConsumeFieldValue(num, typ, b[n:]) // read whole before
		if num == fd.Number() {
			if j > 0 {
				out = append(out, ',')
			}
			j++
			var ok bool
			if out, ok = appendWireValue(out, fd, b[n:n+m]); !ok {
				return out, false
			}
		}
		b = b[n+m:]
	}
	return append(out, ']'), true
}

// wireView is how appendWireJSON renders a deliveryv1.Message.
type wireView struct {
	// message: the top level is a deliveryv1.Message (its locked field is
	// the view's).
	message bool
	// locked: the locked view.
	locked bool
}

// strips reports whether the locked view leaves fd out (messageview.Apply).
func (wireView) strips(fd protoreflect.FieldDescriptor) bool {
	return lockedView.strips[fd.Number()]
}

// lockedView is what messageview.Apply does to a Message for a viewer it is
// locked for, learnt once by applying it to a message with every field set,
// so that the rule lives in messageview alone: the fields it clears, and
// ok, false when it does anything else (it changes a field other than
// locked without clearing it, or does not lock): appendWireJSON then
// declines every locked view, and the hub renders those from the decoded
// message through messageview, as before.
var lockedView = learnLockedView()

func learnLockedView() (v struct {
	strips map[protoreflect.FieldNumber]bool
	ok     bool
}) {
	m := &deliveryv1.Message{}
	r := m.ProtoReflect()
	fds := r.Descriptor().Fields()
	for i := range fds.Len() {
		fd := fds.Get(i)
		x, ok := sampleValue(r, fd)
		if !ok {
			return v
		}
		r.Set(fd, x)
	}
	m.Sensitive, m.Sender, m.Locked = true, "users/lockedview-sender", false
	before := proto.Clone(m).ProtoReflect()
	viewer := auth.Identity{Role: auth.RolePatient, Subject: "lockedview-viewer"}
	messageview.Apply(m, viewer, time.Now(), messageview.DefaultStepUpWindow)
	if !m.Locked {
		return v
	}
	v.strips = map[protoreflect.FieldNumber]bool{}
	for i := range fds.Len() {
		fd := fds.Get(i)
		switch {
		case fd.Name() == "locked":
		case !r.Has(fd):
			v.strips[fd.Number()] = true
		case !r.Get(fd).Equal(before.Get(fd)):
			return v
		}
	}
	v.ok = true
	return v
}

// sampleValue is a value of fd that is set (not its default): one element
// for a list; false for a kind it does not make (a map).
func sampleValue(r protoreflect.Message, fd protoreflect.FieldDescriptor) (protoreflect.Value, bool) {
	if fd.IsMap() {
		return protoreflect.Value{}, false
	}
	if fd.IsList() {
		l := r.NewField(fd)
		e := l.List().NewElement()
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			x, ok := sampleScalar(fd)
			if !ok {
				return protoreflect.Value{}, false
			}
			e = x
		}
		l.List().Append(e)
		return l, true
	}
	if fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind {
		return r.NewField(fd), true
	}
	return sampleScalar(fd)
}

func sampleScalar(fd protoreflect.FieldDescriptor) (protoreflect.Value, bool) {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true), true
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(1), true
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(1), true
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(1), true
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(1), true
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(1), true
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(1), true
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(1), true
	case protoreflect.StringKind:
		return protoreflect.ValueOfString("x"), true
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{1}), true
	}
	return protoreflect.Value{}, false
}

// wireType is the wire type fd's values are encoded with (unpacked).
func wireType(fd protoreflect.FieldDescriptor) protowire.Type {
	switch fd.Kind() {
	case protoreflect.StringKind, protoreflect.BytesKind, protoreflect.MessageKind:
		return protowire.BytesType
	case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
		return protowire.Fixed32Type
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind, protoreflect.DoubleKind:
		return protowire.Fixed64Type
	case protoreflect.GroupKind:
		return protowire.StartGroupType
	}
	return protowire.VarintType
}

// appendWireValue appends one value of fd from v, its encoding after the
// tag (wire type already checked).
func appendWireValue(out []byte, fd protoreflect.FieldDescriptor, v []byte) ([]byte, bool) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		s, n := protowire.ConsumeBytes(v)
		if n < 0 {
			return out, false
		}
		return appendJSONBytes(out, s)
	case protoreflect.BytesKind:
		s, n := protowire.ConsumeBytes(v)
		if n < 0 {
			return out, false
		}
		out = append(out, '"')
		return append(base64.StdEncoding.AppendEncode(out, s), '"'), true
	case protoreflect.MessageKind:
		s, n := protowire.ConsumeBytes(v)
		if n < 0 {
			return out, false
		}
		return appendWireJSON(out, fd.Message(), s, wireView{})
	case protoreflect.Fixed32Kind:
		x, n := protowire.ConsumeFixed32(v)
		if n < 0 {
			return out, false
		}
		return strconv.AppendUint(out, uint64(x), 10), true
	case protoreflect.Sfixed32Kind:
		x, n := protowire.ConsumeFixed32(v)
		if n < 0 {
			return out, false
		}
		return strconv.AppendInt(out, int64(int32(x)), 10), true
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind:
		x, n := protowire.ConsumeFixed64(v)
		if n < 0 {
			return out, false
		}
		out = append(out, '"')
		if fd.Kind() == protoreflect.Fixed64Kind {
			out = strconv.AppendUint(out, x, 10)
		} else {
			out = strconv.AppendInt(out, int64(x), 10)
		}
		return append(out, '"'), true
	case protoreflect.FloatKind, protoreflect.DoubleKind, protoreflect.GroupKind:
		return out, false
	}
	x, n := protowire.ConsumeVarint(v)
	if n < 0 {
		return out, false
	}
	var val protoreflect.Value
	switch fd.Kind() {
	case protoreflect.BoolKind:
		val = protoreflect.ValueOfBool(x != 0)
	case protoreflect.Int32Kind:
		val = protoreflect.ValueOfInt32(int32(x))
	case protoreflect.Sint32Kind:
		val = protoreflect.ValueOfInt32(int32(protowire.DecodeZigZag(x & math.MaxUint32)))
	case protoreflect.Uint32Kind:
		val = protoreflect.ValueOfUint32(uint32(x))
	case protoreflect.Int64Kind:
		val = protoreflect.ValueOfInt64(int64(x))
	case protoreflect.Sint64Kind:
		val = protoreflect.ValueOfInt64(protowire.DecodeZigZag(x))
	case protoreflect.Uint64Kind:
		val = protoreflect.ValueOfUint64(x)
	case protoreflect.EnumKind:
		val = protoreflect.ValueOfEnum(protoreflect.EnumNumber(int32(x)))
	default:
		return out, false
	}
	return appendSingular(out, fd, val)
}

// appendJSONBytes is appendJSONString of a string's bytes (no copy).
func appendJSONBytes(out []byte, s []byte) ([]byte, bool) {
	if !utf8.Valid(s) {
		return out, false
	}
	out = append(out, '"')
	start := 0
	for i, c := range s {
		if c >= ' ' && c != '"' && c != '\\' {
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
		start = i + 1
	}
	out = append(out, s[start:]...)
	return append(out, '"'), true
}

// appendWireTimestamp is appendTimestamp of an encoded Timestamp.
func appendWireTimestamp(out []byte, b []byte) ([]byte, bool) {
	secs, nanos, ok := eventwire.TimestampParts(b)
	if !ok {
		return out, false
	}
	return appendTimestampParts(out, secs, int64(nanos))
}
