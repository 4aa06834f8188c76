package eventwire_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/eventwire"
)

// SplitMeta reads what unmarshalling gives, and the rest unmarshals to the
// event without its meta.
func TestSplitMetaIsUnmarshal(t *testing.T) {
	at := time.Date(2026, 12, 2, 6, 0, 0, 5, time.UTC)
	for _, m := range []*typev1.EventMeta{
		{Id: "ev-1", Time: timestamppb.New(at), Practice: "p1", Actor: "users/u", ActorRole: "dentist", Action: "message.send",
			Resource: "conversations/c/messages/m", Outcome: typev1.EventMeta_DENIED, Detail: "d ✓"},
		{Practice: "p1"},
		{Time: &timestamppb.Timestamp{Seconds: -5, Nanos: 1}},
		{},
	} {
		ev := &deliveryv1.MessageCreated{Meta: m, Message: &deliveryv1.Message{Name: "conversations/c/messages/m", Text: "x"}, Patient: "patients/p"}
		data, err := proto.Marshal(ev)
		require.NoError(t, err)
		h, rest, ok := eventwire.SplitMeta(data, "p1", "message.send")
		require.True(t, ok)
		require.Equal(t, m.GetPractice(), h.Practice)
		require.Equal(t, m.GetAction(), h.Action)
		if m.GetTime() == nil {
			require.True(t, h.Time.IsZero())
		} else {
			require.Equal(t, m.GetTime().AsTime(), h.Time)
		}
		var got deliveryv1.MessageCreated
		require.NoError(t, proto.Unmarshal(rest, &got))
		require.Nil(t, got.GetMeta())
		ev.Meta = nil
		require.True(t, proto.Equal(ev, &got))
	}
}

// Shapes SplitMeta leaves to proto.Unmarshal.
func TestSplitMetaDeclines(t *testing.T) {
	meta := func(fields ...[]byte) []byte {
		var m []byte
		for _, f := range fields {
			m = append(m, f...)
		}
		b := protowire.AppendTag(nil, 1, protowire.BytesType)
		return protowire.AppendBytes(b, m)
	}
	str := func(n protowire.Number, s string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, n, protowire.BytesType), s)
	}
	varint := func(n protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(nil, n, protowire.VarintType), v)
	}
	msg := str(2, "\x0a\x01m") // a Message with a name
	for name, data := range map[string][]byte{
		"no meta":                   msg,
		"meta last":                 append(append([]byte{}, msg...), meta(str(3, "p"))...),
		"two metas":                 append(meta(str(3, "p")), meta(str(6, "a"))...),
		"invalid UTF-8":             meta(str(1, "\xff")),
		"a string as a varint":      meta(varint(3, 1)),
		"outcome as bytes":          meta(str(8, "x")),
		"a truncated meta":          meta(str(3, "p"))[:4],
		"two times":                 meta(str(2, ""), str(2, "")),
		"a time's seconds as bytes": meta(str(2, string(str(1, "x")))),
	} {
		_, _, ok := eventwire.SplitMeta(data, "")
		require.False(t, ok, name)
	}
	// Unknown fields in the meta are skipped, as proto.Unmarshal keeps them
	// aside.
	_, _, ok := eventwire.SplitMeta(append(meta(str(3, "p"), varint(99, 1)), msg...), "")
	require.True(t, ok)
}

// The meta read allocates nothing for an event of the expected practice
// with a known action.
func TestSplitMetaAllocatesNothing(t *testing.T) {
	data, err := proto.Marshal(&conversationv1.ConversationUpdated{Meta: &typev1.EventMeta{Id: "ev", Practice: "p1",
		Action: "conversation.activity", Time: timestamppb.Now(), Actor: "system", Resource: "conversations/c"}, MessageSeq: 2})
	require.NoError(t, err)
	require.Zero(t, testing.AllocsPerRun(100, func() {
		h, _, ok := eventwire.SplitMeta(data, "p1", "conversation.activity")
		if !ok || h.Practice != "p1" || h.Action != "conversation.activity" {
			t.Fatal(h, ok)
		}
	}))
}
