package gateway

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	artifactv1 "github.com/clinicchat/clinicchat/proto/clinicchat/artifact/v1"
	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/policy/messageview"
)

// wireViews are the views appendWireJSON renders of a message of md, each
// with what it must equal: appendJSON of the decoded message as the view
// leaves it (messageview.Apply for a Message).
func wireViews(md protoreflect.MessageDescriptor) []wireView {
	if md.FullName() == (*deliveryv1.Message)(nil).ProtoReflect().Descriptor().FullName() {
		return []wireView{{message: true}, {message: true, locked: true}}
	}
	return []wireView{{}}
}

// requireWireIsDecoded checks appendWireJSON of data against proto.Unmarshal
// then appendJSON, for every view; it reports whether every view was
// written from the wire.
func requireWireIsDecoded(t *testing.T, md protoreflect.MessageDescriptor, data []byte, what string) bool {
	t.Helper()
	all := true
	for _, view := range wireViews(md) {
		got, ok := appendWireJSON(nil, md, data, view)
		msg := newOf(md)
		uerr := proto.Unmarshal(data, msg.Interface())
		if !ok {
			all = false
			continue
		}
		require.NoError(t, uerr, "written from the wire although Unmarshal refuses it: %s %+v", what, view)
		if view.message {
			dm := msg.Interface().(*deliveryv1.Message)
			// The view as messageview decides it, for a viewer it is
			// locked for or not (the message made sensitive only for the
			// decision).
			sensitive := dm.Sensitive
			dm.Sensitive = view.locked
			messageview.Apply(dm, auth.Identity{Role: auth.RolePatient, Subject: "wire-test-viewer"}, time.Now(), messageview.DefaultStepUpWindow)
			require.Equal(t, view.locked, dm.Locked)
			dm.Sensitive = sensitive
		}
		want, wok := appendJSON(nil, msg)
		require.True(t, wok, "written from the wire, declined decoded: %s", what)
		require.Equal(t, string(want), string(got), "%s %+v", what, view)
	}
	return all
}

// newOf is a new message of md (a generated type).
func newOf(md protoreflect.MessageDescriptor) protoreflect.Message {
	switch md.FullName() {
	case (*deliveryv1.Message)(nil).ProtoReflect().Descriptor().FullName():
		return (&deliveryv1.Message{}).ProtoReflect()
	default:
		return (&conversationv1.Conversation{}).ProtoReflect()
	}
}

// fields splits an encoding into its top-level fields.
func fields(t *testing.T, data []byte) [][]byte {
	var out [][]byte
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		require.GreaterOrEqual(t, n, 0)
		m := protowire.ConsumeFieldValue(num, typ, data[n:])
		require.GreaterOrEqual(t, m, 0)
		out = append(out, data[:n+m])
		data = data[n+m:]
	}
	return out
}

// The hub renders a message event's Message from its bytes: the same JSON
// as unmarshalling it and rendering it with appendJSON, in both viewer
// classes (locked: no text, attachments or artifact), for random messages,
// their fields in any order and merged encodings (declined, or the same).
func TestAppendWireJSONIsAppendJSON(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, m := range []proto.Message{&deliveryv1.Message{}, &conversationv1.Conversation{}} {
		md := m.ProtoReflect().Descriptor()
		written, tried := 0, 0
		for i := range 3000 {
			msg := m.ProtoReflect().New()
			fill(r, msg, 0)
			data, err := proto.Marshal(msg.Interface())
			if err != nil {
				continue // not UTF-8: the publisher cannot encode it either
			}
			tried++
			if requireWireIsDecoded(t, md, data, "as encoded") {
				written++
			}
			f := fields(t, data)
			r.Shuffle(len(f), func(a, b int) { f[a], f[b] = f[b], f[a] })
			var shuffled []byte
			for _, x := range f {
				shuffled = append(shuffled, x...)
			}
			requireWireIsDecoded(t, md, shuffled, "shuffled")
			if i%10 == 0 {
				other := m.ProtoReflect().New()
				fill(r, other, 0)
				if od, err := proto.Marshal(other.Interface()); err == nil {
					requireWireIsDecoded(t, md, append(append([]byte{}, data...), od...), "merged")
				}
			}
		}
		require.Greater(t, written, tried*6/10, "%s: most random values are written from the wire", md.FullName())
	}
}

// What the wire renderer leaves to Unmarshal: a message field twice, a
// field of another wire type, text that is not UTF-8 (in the locked view
// too, where it is not shown), a truncated encoding.
func TestAppendWireJSONDeclines(t *testing.T) {
	md := (*deliveryv1.Message)(nil).ProtoReflect().Descriptor()
	good, err := proto.Marshal(&deliveryv1.Message{Name: "conversations/c/messages/m", Sender: "users/u", Text: "hi",
		Sensitive: true, CreateTime: timestamppb.Now(), Artifact: &artifactv1.Artifact{Ref: "a"}})
	require.NoError(t, err)
	_, ok := appendWireJSON(nil, md, good, wireView{message: true, locked: true})
	require.True(t, ok)
	for name, data := range map[string][]byte{
		"create time twice": protowire.AppendBytes(protowire.AppendTag(append([]byte{}, good...), 10, protowire.BytesType), nil),
		"artifact twice":    protowire.AppendBytes(protowire.AppendTag(append([]byte{}, good...), 8, protowire.BytesType), nil),
		"text as a varint":  protowire.AppendVarint(protowire.AppendTag(nil, 4, protowire.VarintType), 1),
		"text not UTF-8":    protowire.AppendString(protowire.AppendTag(append([]byte{}, good...), 4, protowire.BytesType), "a\xff"),
		"truncated":         good[:len(good)-1],
	} {
		for _, view := range wireViews(md) {
			_, ok := appendWireJSON(nil, md, data, view)
			require.False(t, ok, "%s %+v", name, view)
		}
	}
}

// A render from the wire allocates its output only.
func TestRenderWireAllocatesItsOutputOnly(t *testing.T) {
	s := &Server{}
	data, err := proto.Marshal(&deliveryv1.Message{Name: "conversations/c/messages/m", Sender: "users/u", Text: "Your crown is ready",
		CreateTime: timestamppb.Now(), Seq: 4, Attachments: []*deliveryv1.Message_AttachmentRef{{Attachment: "attachments/a", Filename: "x.pdf"}}})
	require.NoError(t, err)
	require.NotNil(t, s.renderWire(data, false))
	require.Equal(t, 1.0, testing.AllocsPerRun(100, func() { _ = s.renderWire(data, true) }))
}

// BenchmarkMessageEventRender is the hub's work per message event before a
// stream writes it: decode, then render the unlocked view. "wire" is
// decodeEvent's head and the render from the event's bytes; "decoded"
// unmarshals the whole event and renders the Message with appendJSON (as
// every message event was before).
func BenchmarkMessageEventRender(b *testing.B) {
	at := timestamppb.Now()
	ev := &deliveryv1.MessageCreated{Meta: &typev1.EventMeta{Id: "01JEXAMPLEEVENTID000000000", Time: at, Practice: "practice-1",
		Actor: "users/u-1", ActorRole: "dentist", Action: "message.send", Resource: "conversations/c-1/messages/m-1"},
		Message: &deliveryv1.Message{Name: "conversations/c-1/messages/m-1", Sender: "users/u-1", SenderRole: "dentist",
			Text: strings.Repeat("x", 64), CreateTime: at, Seq: 3, RequestId: "req-1", SenderDisplayName: "Dr Amy",
			Status: deliveryv1.Message_SENT},
		Patient: "patients/pa"}
	data, err := proto.Marshal(ev)
	require.NoError(b, err)
	s := &Server{}
	log := zap.NewNop()
	b.Run("wire", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			e := decodeEvent(log, streamD, 1, natsx.SubjectMessageCreated, data, "practice-1")
			if e.raw == nil || s.renderWire(e.raw, false) == nil {
				b.Fatal("not from the wire")
			}
		}
	})
	b.Run("decoded", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var whole deliveryv1.MessageCreated
			if err := proto.Unmarshal(data, &whole); err != nil {
				b.Fatal(err)
			}
			if _, err := s.render("message", whole.GetMessage()); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// The locked view's rule is learnt from messageview.Apply, not written
// again here: the fields it clears for a locked viewer are the ones the
// wire renderer leaves out.
func TestLockedViewIsMessageviews(t *testing.T) {
	require.True(t, lockedView.ok)
	var names []string
	fds := (*deliveryv1.Message)(nil).ProtoReflect().Descriptor().Fields()
	for i := range fds.Len() {
		if lockedView.strips[fds.Get(i).Number()] {
			names = append(names, string(fds.Get(i).Name()))
		}
	}
	require.ElementsMatch(t, []string{"text", "attachments", "artifact"}, names)
}
