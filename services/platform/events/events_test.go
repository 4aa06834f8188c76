package events

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// TestMetaFieldsAndAllocations: Meta, Denied and System fill the meta as
// they did field by field (the time as timestamppb.New makes it), and the
// meta with its time is one allocation beyond the id's.
func TestMetaFieldsAndAllocations(t *testing.T) {
	at := time.Date(2026, 12, 2, 9, 30, 0, 123456789, time.UTC)
	who := auth.Identity{Subject: "dr-lee", Role: "dentist", Practice: "demo"}
	m := Meta(who, "message.send", "conversations/c1/messages/3", at)
	want := &typev1.EventMeta{Id: m.GetId(), Time: timestamppb.New(at), Practice: "demo", Actor: who.Principal(),
		ActorRole: "dentist", Action: "message.send", Resource: "conversations/c1/messages/3", Outcome: typev1.EventMeta_ALLOWED}
	if !ids.Valid(m.GetId()) || !proto.Equal(m, want) {
		t.Errorf("Meta = %v, want %v", m, want)
	}
	d := Denied(who, "message.send", "conversations/c1", "CHAT_OPTED_OUT", at)
	want = &typev1.EventMeta{Id: d.GetId(), Time: timestamppb.New(at), Practice: "demo", Actor: who.Principal(),
		ActorRole: "dentist", Action: "message.send", Resource: "conversations/c1", Outcome: typev1.EventMeta_DENIED,
		Detail: "CHAT_OPTED_OUT"}
	if !proto.Equal(d, want) {
		t.Errorf("Denied = %v, want %v", d, want)
	}
	s := System("demo", "conversation.archive", "conversations/c1", at)
	want = &typev1.EventMeta{Id: s.GetId(), Time: timestamppb.New(at), Practice: "demo", Actor: natsx.SystemActor,
		ActorRole: auth.RoleSystem, Action: "conversation.archive", Resource: "conversations/c1", Outcome: typev1.EventMeta_ALLOWED}
	if !proto.Equal(s, want) {
		t.Errorf("System = %v, want %v", s, want)
	}
	id := testing.AllocsPerRun(100, func() { _ = ids.NewOrdered(at) })
	if allocs := testing.AllocsPerRun(100, func() { _ = System("demo", "conversation.archive", "conversations/c1", at) }); allocs > id+1 {
		t.Errorf("System: %v allocations, want the id's %v and one", allocs, id)
	}
}
