package ingest

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
)

var readFallback = time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)

func entryEvents(t testing.TB) [][]byte {
	at := time.Date(2026, 12, 2, 6, 0, 0, 123456789, time.UTC)
	meta := func() *typev1.EventMeta {
		return &typev1.EventMeta{Id: "01JF0Z8Q3W5Y7B9D1F3H5K7M9P", Practice: "p1", Actor: "users/u1", ActorRole: "dentist",
			Action: "message.send", Resource: "conversations/c1/messages/300", Time: timestamppb.New(at)}
	}
	usual := &deliveryv1.MessageCreated{Meta: meta(), Patient: "patients/alice",
		Message: &deliveryv1.Message{Name: "conversations/c1/messages/300", Text: "hello", CreateTime: timestamppb.New(at)}}
	denied := &typev1.AccessRecorded{Meta: meta()}
	denied.Meta.Outcome, denied.Meta.Detail, denied.Meta.Action = typev1.EventMeta_DENIED, "CHAT_OPTED_OUT", "some.other"
	noTime := &typev1.AccessRecorded{Meta: meta()}
	noTime.Meta.Time = nil
	badTime := &typev1.AccessRecorded{Meta: meta()}
	badTime.Meta.Time = &timestamppb.Timestamp{Seconds: 1, Nanos: -1}
	noAction := &typev1.AccessRecorded{Meta: meta()}
	noAction.Meta.Action = ""
	badID := &typev1.AccessRecorded{Meta: meta()}
	badID.Meta.Id = "a/b"
	var out [][]byte
	for _, m := range []proto.Message{usual, denied, noTime, badTime, noAction, badID, &typev1.AccessRecorded{}} {
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, data)
	}
	// A second meta (merged by Unmarshal), a string not UTF-8, garbage.
	twice := protowire.AppendBytes(protowire.AppendTag(append([]byte{}, out[1]...), 1, protowire.BytesType),
		protowire.AppendString(protowire.AppendTag(nil, 7, protowire.BytesType), "conversations/c2"))
	bad := append([]byte{}, out[0]...)
	if i := strings.Index(string(bad), "users/u1"); i >= 0 {
		bad[i] = 0xff
	}
	return append(out, twice, bad, []byte{0xff, 0xff})
}

// FuzzReadEntry: whatever readEntry reads, unmarshalling gives the same
// entry (it declines the rest, which Decode then unmarshals).
func FuzzReadEntry(f *testing.F) {
	for _, data := range entryEvents(f) {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, ok := readEntry(data, readFallback)
		if !ok {
			return
		}
		want, err := decodeUnmarshalled(data, readFallback)
		if err != nil || got != want {
			t.Fatalf("read %+v; unmarshalled %+v, %v", got, want, err)
		}
	})
}

// TestReadEntry: Decode gives what unmarshalling gives for every event,
// errors included; the usual ones are read from the wire, with fewer
// allocations.
func TestReadEntry(t *testing.T) {
	evs := entryEvents(t)
	for i, data := range evs {
		want, wantErr := decodeUnmarshalled(data, readFallback)
		got, err := Decode(data, readFallback)
		if !errors.Is(err, wantErr) || got != want {
			t.Errorf("event %d: decoded %+v, %v; unmarshalled %+v, %v", i, got, err, want, wantErr)
		}
		_, read := readEntry(data, readFallback)
		if wantRead := i < 4; read != wantRead {
			t.Errorf("event %d: read from the wire %v, want %v", i, read, wantRead)
		}
	}
	read := testing.AllocsPerRun(100, func() { _, _ = readEntry(evs[0], readFallback) })
	unmarshalled := testing.AllocsPerRun(100, func() { _, _ = decodeUnmarshalled(evs[0], readFallback) })
	t.Logf("allocations: %v read, %v unmarshalled", read, unmarshalled)
	if read > 4 {
		t.Errorf("readEntry: %v allocations, want at most 4 (id, practice, actor, resource)", read)
	}
}
