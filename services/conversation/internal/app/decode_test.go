package app

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// decodeMessageCreated reads the meta from the wire; an event encoded in
// any other order (the meta last) is unmarshalled whole, and both give the
// same projection input; what is poison stays poison.
func TestDecodeMessageCreatedMetaFromTheWire(t *testing.T) {
	at := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	ev := &deliveryv1.MessageCreated{
		Meta: &typev1.EventMeta{Id: "ev", Practice: "p1", Actor: "users/u1", Action: "message.send", Time: timestamppb.New(at)},
		Message: &deliveryv1.Message{Name: "conversations/c1/messages/m1", Seq: 4, Sender: "users/u1", SenderRole: "dentist",
			CreateTime: timestamppb.New(at), Text: "hello"},
		Patient: "patients/pa"}
	data, err := proto.Marshal(ev)
	require.NoError(t, err)
	got, err := decodeMessageCreated(data)
	require.NoError(t, err)
	require.Equal(t, "p1", got.Practice)
	require.Equal(t, "c1", got.ConversationID)
	require.EqualValues(t, 4, got.Seq)
	require.Equal(t, "users/u1", got.Sender)
	require.False(t, got.FromPatient)
	require.Equal(t, at, got.Time)
	require.Equal(t, "hello", got.Preview)

	// The meta last: unmarshalled whole, the same.
	num, typ, n := protowire.ConsumeTag(data)
	require.EqualValues(t, 1, num)
	m := protowire.ConsumeFieldValue(num, typ, data[n:])
	moved := append(append([]byte{}, data[n+m:]...), data[:n+m]...)
	again, err := decodeMessageCreated(moved)
	require.NoError(t, err)
	require.Equal(t, got, again)

	// No practice, or a meta proto.Unmarshal refuses: poison.
	ev.Meta.Practice = ""
	data, err = proto.Marshal(ev)
	require.NoError(t, err)
	_, err = decodeMessageCreated(data)
	require.ErrorIs(t, err, natsx.ErrPoison)
	bad := protowire.AppendTag(nil, 1, protowire.BytesType)
	bad = protowire.AppendBytes(bad, protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "\xff"))
	_, err = decodeMessageCreated(append(bad, data[n+m:]...))
	require.ErrorIs(t, err, natsx.ErrPoison)
}
