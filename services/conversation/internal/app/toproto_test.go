package app

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
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
