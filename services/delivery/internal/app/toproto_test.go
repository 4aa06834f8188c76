package app_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/app"
	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
)

// TestToProtoInTwoAllocations: a message renders as it did field by field
// (its times as timestamppb.New makes them, none when zero), in two
// allocations: the message with its times, and its name.
func TestToProtoInTwoAllocations(t *testing.T) {
	at := time.Date(2026, 12, 2, 9, 30, 0, 123456000, time.UTC)
	for _, m := range []domain.Message{
		{ConversationID: "c1", Seq: 300, Sender: "users/dr-lee", SenderRole: "dentist", SenderDisplayName: "Dr. Lee",
			Text: "Your crown is ready", Status: domain.Sent, CreateTime: at, RequestID: "r1"},
		{ConversationID: "c1", Seq: 301, Sender: "patients/alice", Text: "thanks", Sensitive: true, Status: domain.Read,
			CreateTime: at, DeliverTime: at.Add(time.Second), ReadTime: at.Add(time.Minute), ReadBy: "users/dr-lee"},
	} {
		want := &deliveryv1.Message{Name: m.Name(), Sender: m.Sender, SenderRole: m.SenderRole, SenderDisplayName: m.SenderDisplayName,
			Text: m.Text, Sensitive: m.Sensitive, Status: deliveryv1.Message_Status(m.Status), CreateTime: timestamppb.New(m.CreateTime),
			RequestId: m.RequestID, Seq: int32(m.Seq), ReadBy: m.ReadBy}
		if !m.DeliverTime.IsZero() {
			want.DeliverTime = timestamppb.New(m.DeliverTime)
		}
		if !m.ReadTime.IsZero() {
			want.ReadTime = timestamppb.New(m.ReadTime)
		}
		if got := app.ToProto(m); !proto.Equal(got, want) {
			t.Errorf("ToProto = %v, want %v", got, want)
		}
		if allocs := testing.AllocsPerRun(100, func() { _ = app.ToProto(m) }); allocs > 2 {
			t.Errorf("ToProto of seq %d: %v allocations, want 2", m.Seq, allocs)
		}
	}
}
