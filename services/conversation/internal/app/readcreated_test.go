package app

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	artifactv1 "github.com/clinicchat/clinicchat/proto/clinicchat/artifact/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
)

func createdEvents(t testing.TB) [][]byte {
	at := time.Date(2026, 12, 2, 6, 0, 0, 123456789, time.UTC)
	usual := func() *deliveryv1.MessageCreated {
		return &deliveryv1.MessageCreated{
			Meta: &typev1.EventMeta{Id: "ev", Practice: "p1", Actor: "users/u1", ActorRole: "dentist", Action: "message.send",
				Resource: "conversations/c1/messages/300", Time: timestamppb.New(at)},
			Message: &deliveryv1.Message{Name: "conversations/c1/messages/300", Seq: 300, Sender: "users/u1", SenderRole: "dentist",
				SenderDisplayName: "Dr. Lee", CreateTime: timestamppb.New(at), Text: "Your crown is ready", RequestId: "r1",
				Status: deliveryv1.Message_SENT},
			Patient: "patients/alice"}
	}
	var evs []*deliveryv1.MessageCreated
	evs = append(evs, usual())
	e := usual()
	e.Message.Sensitive, e.Message.SenderRole, e.Message.Sender = true, "patient", "patients/alice"
	evs = append(evs, e)
	e = usual()
	e.Message.Text = strings.Repeat("é", 130)
	evs = append(evs, e)
	e = usual()
	e.Message.Text, e.Message.Seq = "", -3
	evs = append(evs, e)
	e = usual()
	e.Message.CreateTime = nil
	evs = append(evs, e)
	e = usual()
	e.Message.Attachments = []*deliveryv1.Message_AttachmentRef{{Attachment: "attachments/a", Filename: "x.pdf"}}
	e.Message.Text = ""
	evs = append(evs, e)
	e = usual()
	e.Message.Artifact = &artifactv1.Artifact{Type: artifactv1.Artifact_INVOICE, Ref: "i1"}
	e.Message.Text = ""
	evs = append(evs, e)
	e = usual()
	e.Message.Name = "conversations/c1/x/300"
	evs = append(evs, e)
	e = usual()
	e.Meta.Practice = ""
	evs = append(evs, e)
	var out [][]byte
	for _, e := range evs {
		data, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, data)
	}
	// A field given twice (Unmarshal keeps the last), the text not UTF-8.
	out = append(out, protowire.AppendString(protowire.AppendTag(append([]byte{}, out[0]...), 3, protowire.BytesType), "patients/bob"))
	bad := append([]byte{}, out[0]...)
	if i := strings.Index(string(bad), "Your crown"); i >= 0 {
		bad[i] = 0xff
	}
	return append(out, bad)
}

// FuzzReadMessageCreated: whatever readMessageCreated reads, the event
// unmarshalled gives the same projection input (it declines the rest, which
// decodeMessageCreated then unmarshals).
func FuzzReadMessageCreated(f *testing.F) {
	for _, data := range createdEvents(f) {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, ok := readMessageCreated(data)
		if !ok {
			return
		}
		want, wantErr := unmarshalMessageCreated(data)
		wantOK := wantErr == nil
		if !wantOK || got != want {
			t.Fatalf("read %+v; unmarshalled %+v (ok %v)", got, want, wantOK)
		}
	})
}

// TestReadMessageCreated: the usual event is read from the wire, in a few
// allocations; the others are left to Unmarshal; decodeMessageCreated
// gives what unmarshalling gives for every one, poison included.
func TestReadMessageCreated(t *testing.T) {
	evs := createdEvents(t)
	for i, data := range evs {
		want, wantErr := unmarshalMessageCreated(data)
		wantOK := wantErr == nil
		got, err := decodeMessageCreated(data)
		if wantOK != (err == nil) || (wantOK && got != want) {
			t.Errorf("event %d: decoded %+v, %v; unmarshalled %+v (ok %v)", i, got, err, want, wantOK)
		}
		_, read := readMessageCreated(data)
		if wantRead := i < 5; read != wantRead {
			t.Errorf("event %d: read from the wire %v, want %v", i, read, wantRead)
		}
	}
	read := testing.AllocsPerRun(100, func() { _, _ = readMessageCreated(evs[0]) })
	unmarshalled := testing.AllocsPerRun(100, func() { _, _ = unmarshalMessageCreated(evs[0]) })
	t.Logf("allocations: %v read, %v unmarshalled", read, unmarshalled)
	if read > 5 {
		t.Errorf("readMessageCreated: %v allocations, want at most 5", read)
	}
}
