package app

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// TestToProtoInThreeAllocations: a thread renders as it did field by field
// (its times as timestamppb.New makes them, the optional ones absent when
// zero), in three allocations: the thread with its times, its name and its
// patient's name.
func TestToProtoInThreeAllocations(t *testing.T) {
	at := time.Date(2026, 12, 2, 9, 30, 0, 123456000, time.UTC)
	for _, c := range []domain.Conversation{
		{Practice: "p", ID: "c1", PatientID: "alice", PatientDisplayName: "Alice Johnson", State: 1, CreateTime: at},
		{Practice: "p", ID: "c2", PatientID: "jose", State: 2, CreateTime: at, LastMessageTime: at.Add(time.Hour),
			AwaitingReplySince: at.Add(2 * time.Hour), LastMessagePreview: "hi", UnreadCount: 3, Pinned: true, Muted: true,
			LastMessageSeq: 300, Assignee: "users/hana", AssigneeDisplayName: "Hana Kim"},
	} {
		want := &conversationv1.Conversation{Name: c.Name(), Patient: c.Patient(), PatientDisplayName: c.PatientDisplayName,
			State: conversationv1.Conversation_State(c.State), CreateTime: timestamppb.New(c.CreateTime),
			LastMessagePreview: c.LastMessagePreview, UnreadCount: int32(c.UnreadCount), Pinned: c.Pinned, Muted: c.Muted,
			LastMessageSeq: int32(c.LastMessageSeq), Assignee: c.Assignee, AssigneeDisplayName: c.AssigneeDisplayName}
		if !c.LastMessageTime.IsZero() {
			want.LastMessageTime = timestamppb.New(c.LastMessageTime)
		}
		if !c.AwaitingReplySince.IsZero() {
			want.AwaitingReplySince = timestamppb.New(c.AwaitingReplySince)
		}
		if got := ToProto(c); !proto.Equal(got, want) {
			t.Errorf("ToProto = %v, want %v", got, want)
		}
		if allocs := testing.AllocsPerRun(100, func() { _ = ToProto(c) }); allocs > 3 {
			t.Errorf("ToProto of %s: %v allocations, want 3", c.ID, allocs)
		}
	}
}

// TestMessageEventsNameTheThreadOnce: a message's events (the thread's
// update, a notification per recipient but the sender) all name the thread,
// whose name is made once (each event made its own before).
func TestMessageEventsNameTheThreadOnce(t *testing.T) {
	at := time.Date(2026, 12, 4, 2, 40, 0, 0, time.UTC)
	c := domain.Conversation{Practice: "p", ID: "c1", PatientID: "alice", State: 1, CreateTime: at, LastMessageTime: at,
		LastMessageSeq: 7, UnreadCount: 2, Pinned: true}
	m := domain.MessageApplied{Practice: "p", ConversationID: "c1", Seq: 7, Sender: "users/u", Time: at, Preview: "hi"}
	recipients := []string{"users/u", "patients/alice", "users/v"}
	practice := func(string) string { return "Clinic" }
	out := messageEvents(m, c, recipients, practice)
	if len(out) != 3 {
		t.Fatalf("%d events, want 3", len(out))
	}
	up := out[0].Msg.(*conversationv1.ConversationUpdated)
	if want := ToProto(Shared(c)); !proto.Equal(up.GetConversation(), want) {
		t.Errorf("thread %v, want %v", up.GetConversation(), want)
	}
	if up.GetMeta().GetResource() != "conversations/c1" || up.GetMessageSeq() != 7 {
		t.Errorf("update %v", up)
	}
	for i, r := range []string{"patients/alice", "users/v"} {
		n := out[1+i].Msg.(*conversationv1.Notification)
		if n.GetRecipient() != r || n.GetConversation() != "conversations/c1" || n.GetMessage() != "conversations/c1/messages/7" ||
			n.GetTitle() != "New message from Clinic" {
			t.Errorf("notification %d: %v", i, n)
		}
	}
	// 21 on main (the name made 4 times here).
	if testkit.RaceEnabled {
		return
	}
	if allocs := testing.AllocsPerRun(100, func() { _ = messageEvents(m, c, recipients, practice) }); allocs > 18 {
		t.Errorf("messageEvents: %v allocations, want at most 18", allocs)
	}
}
