package gateway

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/eventwire"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// decodeEventWhole is decodeEvent as it was: the whole event unmarshalled.
func decodeEventWhole(t *testing.T, stream int, subject string, data []byte) *event {
	t.Helper()
	e := decodeEvent(zap.NewNop(), stream, 7, subject, data, "")
	// The same bytes with the meta moved after the other fields: not the
	// shape eventwire.SplitMeta reads, so unmarshalled whole.
	if _, _, ok := eventwire.SplitMeta(data, ""); ok {
		num, typ, n := protowire.ConsumeTag(data)
		require.Equal(t, protowire.Number(1), num)
		m := protowire.ConsumeFieldValue(num, typ, data[n:])
		moved := append(append([]byte{}, data[n+m:]...), data[:n+m]...)
		_, _, ok := eventwire.SplitMeta(moved, "")
		require.False(t, ok, "meta last")
		whole := decodeEvent(zap.NewNop(), stream, 7, subject, moved, "")
		require.Equal(t, e == nil, whole == nil)
		if e != nil {
			requireSameEvent(t, whole, e)
		}
	}
	return e
}

func requireSameEvent(t *testing.T, want, got *event) {
	t.Helper()
	require.Equal(t, want.kind, got.kind)
	require.Equal(t, want.practice, got.practice)
	require.Equal(t, want.patient, got.patient)
	require.Equal(t, want.user, got.user)
	require.Equal(t, want.conversation, got.conversation)
	require.True(t, want.wroteAt.Equal(got.wroteAt), "%v %v", want.wroteAt, got.wroteAt)
	require.Equal(t, want.action, got.action)
	require.True(t, proto.Equal(eventMessage(t, want), eventMessage(t, got)))
	for _, e := range []*event{want, got} {
		// What routing reads is on the head either way.
		full := eventMessage(t, e)
		require.Equal(t, full.GetName(), e.message.GetName())
		require.Equal(t, full.GetSender(), e.message.GetSender())
		require.Equal(t, full.GetSensitive(), e.message.GetSensitive())
		require.Equal(t, full.GetLocked(), e.message.GetLocked())
		require.Equal(t, full.GetSeq(), e.message.GetSeq())
	}
	require.Equal(t, want.updated.GetConversation() == nil, got.updated.GetConversation() == nil)
	require.True(t, proto.Equal(want.updated.GetConversation(), got.updated.GetConversation()))
	require.Equal(t, want.updated.GetMessageSeq(), got.updated.GetMessageSeq())
	require.Equal(t, want.updated.GetMessageFromPatient(), got.updated.GetMessageFromPatient())
}

// eventMessage is e's whole Message: unmarshalled from its bytes when the
// hub kept them (messageEventHead), else the one decoded.
func eventMessage(t *testing.T, e *event) *deliveryv1.Message {
	t.Helper()
	if e.raw == nil {
		return e.message
	}
	m := &deliveryv1.Message{}
	require.NoError(t, proto.Unmarshal(e.raw, m))
	return m
}

// The hub reads an event's meta from the wire and unmarshals the rest:
// every event it streams decodes to what unmarshalling it whole gives.
func TestDecodeEventReadsTheMetaFromTheWire(t *testing.T) {
	at := time.Date(2026, 12, 2, 6, 0, 0, 123456789, time.UTC)
	full := &typev1.EventMeta{Id: "ev-1", Time: timestamppb.New(at), Practice: "p1", Actor: "users/u", ActorRole: "dentist",
		Action: "message.send", Resource: "conversations/c/messages/m", Outcome: typev1.EventMeta_ALLOWED, Detail: "d"}
	msg := &deliveryv1.Message{Name: "conversations/c/messages/m", Sender: "users/u", SenderRole: "dentist", Text: "hello ✓",
		CreateTime: timestamppb.New(at), Seq: 3, RequestId: "r"}
	conv := &conversationv1.Conversation{Name: "conversations/c", Patient: "patients/pa", LastMessageSeq: 3}
	for _, tc := range []struct {
		name    string
		stream  int
		subject string
		ev      proto.Message
	}{
		{"message.created", streamD, natsx.SubjectMessageCreated, &deliveryv1.MessageCreated{Meta: full, Message: msg, Patient: "patients/pa"}},
		{"message.created without a time", streamD, natsx.SubjectMessageCreated,
			&deliveryv1.MessageCreated{Meta: &typev1.EventMeta{Practice: "p1"}, Message: msg, Patient: "patients/pa"}},
		{"message.created, the epoch", streamD, natsx.SubjectMessageCreated,
			&deliveryv1.MessageCreated{Meta: &typev1.EventMeta{Practice: "p1", Time: &timestamppb.Timestamp{}}, Message: msg}},
		{"message.updated", streamD, natsx.SubjectMessageStatusEcho, &deliveryv1.MessageUpdated{Meta: full, Message: msg, Patient: "patients/pa"}},
		{"conversation.updated, activity", streamC, natsx.SubjectConversationEcho, &conversationv1.ConversationUpdated{
			Meta: &typev1.EventMeta{Practice: "p1", Action: actionActivity, Time: timestamppb.New(at)}, Conversation: conv, MessageSeq: 3}},
		{"conversation.updated, another action", streamC, natsx.SubjectConversationUpdated, &conversationv1.ConversationUpdated{
			Meta: &typev1.EventMeta{Practice: "p1", Action: "conversation.pin"}, Conversation: conv}},
		{"conversation.created", streamC, natsx.SubjectConversationCreated,
			&conversationv1.ConversationCreated{Meta: full, Conversation: conv}},
		{"conversation.read", streamC, natsx.SubjectConversationRead,
			&conversationv1.ConversationRead{Meta: full, Conversation: "conversations/c", Reader: "patients/pa"}},
		{"no meta", streamD, natsx.SubjectMessageCreated, &deliveryv1.MessageCreated{Message: msg}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := proto.Marshal(tc.ev)
			require.NoError(t, err)
			subject := tc.subject
			got := decodeEventWhole(t, tc.stream, subject, data)
			if tc.name == "no meta" {
				require.Empty(t, got.practice, "no practice: seen by nobody")
				return
			}
			require.NotNil(t, got)
			_, _, split := eventwire.SplitMeta(data, "")
			require.True(t, split, "Go's encoding puts the meta first")
			if p := got.practice; p != "" {
				again := decodeEvent(zap.NewNop(), tc.stream, 7, subject, data, "p1")
				require.Equal(t, p, again.practice)
			}
		})
	}
	// A message.created's time and action.
	data, err := proto.Marshal(&deliveryv1.MessageCreated{Meta: full, Message: msg, Patient: "patients/pa"})
	require.NoError(t, err)
	e := decodeEvent(zap.NewNop(), streamD, 7, natsx.SubjectMessageCreated, data, "p1")
	require.Equal(t, at, e.wroteAt)
	require.Equal(t, "p1", e.practice)
	require.Equal(t, "message.send", e.action)
}

// What proto.Unmarshal refuses in a meta is refused as before: the event is
// skipped.
func TestDecodeEventRefusesWhatUnmarshalRefuses(t *testing.T) {
	msg := &deliveryv1.Message{Name: "conversations/c/messages/m", Sender: "users/u"}
	subject := natsx.SubjectMessageCreated
	for _, bad := range []string{"id", "actor", "detail"} {
		m := &typev1.EventMeta{Practice: "p1"}
		switch bad {
		case "id":
			m.Id = "\xff"
		case "actor":
			m.Actor = "a\xc3"
		case "detail":
			m.Detail = "\xed\xa0\x80"
		}
		data, err := proto.MarshalOptions{}.Marshal(&deliveryv1.MessageCreated{Meta: m, Message: msg})
		if err != nil { // the marshaller may refuse it too; build the bytes by hand then
			var meta []byte
			meta = protowire.AppendTag(meta, 3, protowire.BytesType)
			meta = protowire.AppendString(meta, "p1")
			meta = protowire.AppendTag(meta, 1, protowire.BytesType)
			meta = protowire.AppendString(meta, "\xff")
			data = protowire.AppendTag(nil, 1, protowire.BytesType)
			data = protowire.AppendBytes(data, meta)
		}
		require.Error(t, proto.Unmarshal(data, &deliveryv1.MessageCreated{}))
		require.Nil(t, decodeEvent(zap.NewNop(), streamD, 1, subject, data, "p1"), bad)
	}
	// A meta field with another wire type is an unknown field to
	// proto.Unmarshal: the event is unmarshalled whole, as before.
	var meta []byte
	meta = protowire.AppendTag(meta, 3, protowire.VarintType)
	meta = protowire.AppendVarint(meta, 5)
	data := protowire.AppendTag(nil, 1, protowire.BytesType)
	data = protowire.AppendBytes(data, meta)
	mb, err := proto.Marshal(msg)
	require.NoError(t, err)
	data = protowire.AppendTag(data, 2, protowire.BytesType)
	data = protowire.AppendBytes(data, mb)
	_, _, ok := eventwire.SplitMeta(data, "p1")
	require.False(t, ok)
	var whole deliveryv1.MessageCreated
	require.NoError(t, proto.Unmarshal(data, &whole))
	e := decodeEvent(zap.NewNop(), streamD, 1, subject, data, "p1")
	require.Equal(t, whole.GetMeta().GetPractice(), e.practice)
	require.Empty(t, e.practice)
}

// Two metas are merged by proto.Unmarshal; the hub unmarshals such an
// event whole.
func TestDecodeEventTwoMetasMerged(t *testing.T) {
	msg := &deliveryv1.Message{Name: "conversations/c/messages/m", Sender: "users/u"}
	a, err := proto.Marshal(&deliveryv1.MessageCreated{Meta: &typev1.EventMeta{Practice: "p1"}, Message: msg})
	require.NoError(t, err)
	b, err := proto.Marshal(&deliveryv1.MessageCreated{Meta: &typev1.EventMeta{Action: "x"}})
	require.NoError(t, err)
	data := append(a, b...)
	_, _, ok := eventwire.SplitMeta(data, "")
	require.False(t, ok)
	e := decodeEvent(zap.NewNop(), streamD, 1, natsx.SubjectMessageCreated, data, "")
	require.Equal(t, "p1", e.practice)
	require.Equal(t, "x", e.action)
}

// parseAck reads the ack subject as nats.go's Metadata does.
func TestParseAck(t *testing.T) {
	for _, tc := range []struct {
		reply string
		want  ackInfo
		ok    bool
	}{
		{"$JS.ACK.DELIVERY.cons.1.42.7.1700000000000000001.3", ackInfo{stream: 42, consumer: 7, pending: 3, timestamp: time.Unix(0, 1700000000000000001)}, true},
		{"$JS.ACK._.ACCHASH.DELIVERY.cons.1.42.7.1700000000000000001.0.tok", ackInfo{stream: 42, consumer: 7, pending: 0, timestamp: time.Unix(0, 1700000000000000001)}, true},
		{"$JS.ACK.dom.ACCHASH.DELIVERY.cons.2.42.7.1700000000000000001.5", ackInfo{stream: 42, consumer: 7, pending: 5, timestamp: time.Unix(0, 1700000000000000001)}, true},
		{"$JS.ACK.DELIVERY.cons.1.42.7.1700000000000000001", ackInfo{}, false},
		{"$JS.ACK.a.DELIVERY.cons.1.42.7.1.2", ackInfo{}, false}, // 10 tokens
		{"_INBOX.x.y.z.1.2.3.4.5", ackInfo{}, false},
	} {
		got, ok := parseAck(tc.reply)
		require.Equal(t, tc.ok, ok, tc.reply)
		if ok {
			require.Equal(t, tc.want.stream, got.stream)
			require.Equal(t, tc.want.consumer, got.consumer)
			require.Equal(t, tc.want.pending, got.pending)
			require.True(t, tc.want.timestamp.Equal(got.timestamp))
		}
	}
	require.Zero(t, testing.AllocsPerRun(100, func() { _, _ = parseAck("$JS.ACK._.H.DELIVERY.cons.1.42.7.1700000000000000001.0.tok") }))
}

// BenchmarkDecodeEvent is the hub's decode of a message.created and a
// conversation.updated as published: "wire" reads the meta from the wire,
// "whole" is the same event with its meta last, which decodeEvent
// unmarshals whole (as every event was before).
func BenchmarkDecodeEvent(b *testing.B) {
	at := time.Now()
	meta := &typev1.EventMeta{Id: "01JEXAMPLEEVENTID000000000", Time: timestamppb.New(at), Practice: "practice-1", Actor: "users/u-1",
		ActorRole: "dentist", Action: "message.send", Resource: "conversations/c-1/messages/m-1", Outcome: typev1.EventMeta_ALLOWED}
	msg := &deliveryv1.Message{Name: "conversations/c-1/messages/m-1", Sender: "users/u-1", SenderRole: "dentist",
		Text: strings.Repeat("x", 64), CreateTime: timestamppb.New(at), Seq: 3, RequestId: "req-1", SenderDisplayName: "Dr Amy"}
	for _, tc := range []struct {
		name    string
		stream  int
		subject string
		ev      proto.Message
	}{
		{"message.created", streamD, natsx.SubjectMessageCreated, &deliveryv1.MessageCreated{Meta: meta, Message: msg, Patient: "patients/pa"}},
		{"conversation.updated", streamC, natsx.SubjectConversationEcho, &conversationv1.ConversationUpdated{
			Meta: &typev1.EventMeta{Id: "01JEXAMPLEEVENTID000000001", Time: timestamppb.New(at), Practice: "practice-1",
				Actor: natsx.SystemActor, Action: actionActivity, Resource: "conversations/c-1", Outcome: typev1.EventMeta_ALLOWED},
			Conversation: &conversationv1.Conversation{Name: "conversations/c-1", Patient: "patients/pa", LastMessageSeq: 3,
				PatientDisplayName: "Alice", LastMessagePreview: strings.Repeat("x", 64), LastMessageTime: timestamppb.New(at)},
			MessageSeq: 3}},
	} {
		data, err := proto.Marshal(tc.ev)
		require.NoError(b, err)
		num, typ, n := protowire.ConsumeTag(data)
		m := protowire.ConsumeFieldValue(num, typ, data[n:])
		whole := append(append([]byte{}, data[n+m:]...), data[:n+m]...)
		for _, v := range []struct {
			name string
			data []byte
		}{{"wire", data}, {"whole", whole}} {
			b.Run(tc.name+"/"+v.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if decodeEvent(zap.NewNop(), tc.stream, 1, tc.subject, v.data, "practice-1") == nil {
						b.Fatal("nil")
					}
				}
			})
		}
	}
}
