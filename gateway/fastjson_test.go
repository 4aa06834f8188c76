package gateway

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
)

// TestAppendJSONIsProtojson: for randomly filled event resources (every
// field set or not, strings with quotes, control characters, non-ASCII and
// invalid UTF-8, unknown enum numbers, timestamps with 0–9 fractional
// digits and out of range), appendJSON writes exactly what protojson writes
// (whitespace aside: protojson adds some at random), or declines, and then
// only where protojson fails too or for a shape it does not handle.
func TestAppendJSONIsProtojson(t *testing.T) {
	opts := protojson.MarshalOptions{EmitUnpopulated: true}
	r := rand.New(rand.NewPCG(1, 2))
	for _, m := range []proto.Message{&deliveryv1.Message{}, &conversationv1.Conversation{}} {
		written := 0
		for i := range 3000 {
			msg := m.ProtoReflect().New()
			fill(r, msg, 0)
			want, werr := opts.Marshal(msg.Interface())
			got, ok := appendJSON(nil, msg)
			if !ok {
				require.Error(t, werr, "declined although protojson writes it (%d): %v", i, msg)
				continue
			}
			require.NoError(t, werr, "written although protojson refuses it (%d): %v", i, msg)
			var compact bytes.Buffer
			require.NoError(t, json.Compact(&compact, want))
			require.Equal(t, compact.String(), string(got), "%d: %v", i, msg)
			written++
		}
		require.Greater(t, written, 2000, "%s: most random values are written", m.ProtoReflect().Descriptor().FullName())
	}
}

var fillStrings = []string{"", "Your crown is ready", `say "hi" \ bye`, "tab\there\nnew\r\b\f\x00\x01\x1f\x7f",
	"Zoë Ångström 歯科 🦷", "\u2028\u2029<>&", "�"}

// badStrings are not UTF-8: protojson refuses them.
var badStrings = []string{"\xff\xfe bad", "a\xc3"}

// fill sets a random subset of m's fields to random values.
func fill(r *rand.Rand, m protoreflect.Message, depth int) {
	if m.Descriptor().FullName() == "google.protobuf.Timestamp" {
		fds := m.Descriptor().Fields()
		secs := r.Int64N(4_000_000_000)
		if r.IntN(100) == 0 {
			secs = 260_000_000_000 // out of range
		}
		nanos := []int64{0, 5_000_000, 123_000_000, 120_000, 123_456, 1, 999_999_999, 100_000_000}[r.IntN(8)]
		m.Set(fds.ByNumber(1), protoreflect.ValueOfInt64(secs))
		m.Set(fds.ByNumber(2), protoreflect.ValueOfInt32(int32(nanos)))
		return
	}
	fds := m.Descriptor().Fields()
	for i := range fds.Len() {
		fd := fds.Get(i)
		if r.IntN(4) == 0 || fd.IsMap() {
			continue
		}
		if fd.IsList() {
			l := m.Mutable(fd).List()
			for range r.IntN(3) {
				if fd.Kind() == protoreflect.MessageKind {
					if depth < 3 {
						e := l.NewElement()
						fill(r, e.Message(), depth+1)
						l.Append(e)
					}
					continue
				}
				l.Append(randomScalar(r, fd))
			}
			continue
		}
		if fd.Kind() == protoreflect.MessageKind {
			if depth < 3 {
				fill(r, m.Mutable(fd).Message(), depth+1)
			}
			continue
		}
		m.Set(fd, randomScalar(r, fd))
	}
}

func randomScalar(r *rand.Rand, fd protoreflect.FieldDescriptor) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(r.IntN(2) == 0)
	case protoreflect.StringKind:
		if r.IntN(200) == 0 {
			return protoreflect.ValueOfString(badStrings[r.IntN(len(badStrings))])
		}
		return protoreflect.ValueOfString(fillStrings[r.IntN(len(fillStrings))])
	case protoreflect.BytesKind:
		b := make([]byte, r.IntN(8))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		return protoreflect.ValueOfBytes(b)
	case protoreflect.EnumKind:
		if r.IntN(10) == 0 {
			return protoreflect.ValueOfEnum(protoreflect.EnumNumber(99)) // unknown: written as a number
		}
		vals := fd.Enum().Values()
		return protoreflect.ValueOfEnum(vals.Get(r.IntN(vals.Len())).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(r.Uint32()))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(int64(r.Uint64()))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(r.Uint32())
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(r.Uint64())
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(r.Float32())
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(r.Float64())
	}
	panic(fd.Kind().String())
}
