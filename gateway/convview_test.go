package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
)

// TestConvStatesFollowOnlyWhatTheyKnow: a stream's state of its caller's
// own fields counts new messages from the other side on top of what it read
// back, and is dropped (so the next view is read back) by anything it cannot
// account for: an older or unnumbered message, the caller's markRead to
// below the newest message it knows, a pin/mute, another kind of update.
// A markRead to at least the newest message it knows leaves none unread,
// and the messages at or below its watermark never count.
func TestConvStatesFollowOnlyWhatTheyKnow(t *testing.T) {
	const name = "conversations/c"
	staff := auth.Identity{Practice: "p", Subject: "doc", Role: auth.RoleDentist}
	patient := auth.Identity{Practice: "p", Subject: "pa", Role: auth.RolePatient}
	// Events at stream positions 101 and later; the state is read back at 100.
	streamSeq := uint64(100)
	updated := func(action string, seq int64, fromPatient bool) *event {
		streamSeq++
		return &event{kind: itemConversation, conversation: name, seq: streamSeq, action: action, updated: &conversationv1.ConversationUpdated{
			Meta: &typev1.EventMeta{Practice: "p", Action: action}, MessageSeq: seq, MessageFromPatient: fromPatient,
			Conversation: &conversationv1.Conversation{Name: name, Patient: "patients/pa", LastMessageSeq: int32(seq),
				AwaitingReplySince: timestamppb.Now(), Assignee: "users/amy", AssigneeDisplayName: "Amy"}}}
	}
	readBack := &conversationv1.Conversation{Name: name, UnreadCount: 2, Pinned: true, Muted: true, LastMessageSeq: 5}
	// read is the caller's own markRead up to seq (its unread: unused).
	read := func(seq int64) *event {
		streamSeq++
		return &event{kind: itemConversationRead, conversation: name, seq: streamSeq, readTo: seq}
	}

	type step struct {
		e      *event
		unread int32 // want the view with this unread count; -1: read back
	}
	for _, tc := range []struct {
		name  string
		id    auth.Identity
		steps []step
	}{
		{"staff: patient messages count, staff ones do not", staff, []step{
			{updated(actionActivity, 6, true), 3}, {updated(actionActivity, 7, false), 3}, {updated(actionActivity, 8, true), 4}}},
		{"patient: staff messages count", patient, []step{
			{updated(actionActivity, 6, false), 3}, {updated(actionActivity, 7, true), 3}}},
		{"a message projected in order is in what was read back", staff, []step{
			{updated(actionActivity, 4, true), 2}, {updated(actionActivity, 5, true), 2}, {updated(actionActivity, 6, true), 3}}},
		{"a message counted already, received again", staff, []step{
			{updated(actionActivity, 6, true), 3}, {updated(actionActivity, 6, true), -1}}},
		{"a message projected out of order may not be in what was read back", staff, []step{
			{func() *event {
				e := updated(actionActivity, 4, true)
				e.updated.Conversation.LastMessageSeq = 5
				return e
			}(), -1},
			{updated(actionActivity, 6, true), -1}}},
		{"a message dispatched before the read back", staff, []step{
			{func() *event { e := updated(actionActivity, 4, true); e.seq = 99; return e }(), 2},
			{updated(actionActivity, 6, true), 3}}},
		{"out of order", staff, []step{{updated(actionActivity, 7, true), 3}, {updated(actionActivity, 6, true), -1}}},
		{"an activity without its message (older publisher)", staff, []step{{updated(actionActivity, 0, true), -1}}},
		{"assignment and archive keep the state", staff, []step{
			{updated(actionAssign, 0, false), 2}, {updated(actionArchive, 0, false), 2}, {updated(actionActivity, 6, true), 3}}},
		{"an unknown update", staff, []step{{updated("conversation.something", 0, false), -1}}},
		{"the caller's markRead without a watermark (older publisher)", staff, []step{
			{read(0), -1}, {updated(actionActivity, 6, true), -1}}},
		{"the caller's markRead to the newest message known: nothing unread", staff, []step{
			{read(5), 0}, {updated(actionActivity, 6, true), 1}, {updated(actionActivity, 7, false), 1}}},
		{"the caller's markRead past the newest known: what it covers is read when it comes", patient, []step{
			{read(8), 0}, {updated(actionActivity, 6, false), 0}, {updated(actionActivity, 8, false), 0},
			{updated(actionActivity, 7, false), 0}, {updated(actionActivity, 9, false), 1}, {updated(actionActivity, 9, false), -1}}},
		{"the caller's markRead below the newest known: the unread count is not known", staff, []step{
			{updated(actionActivity, 6, true), 3}, {updated(actionActivity, 7, true), 4}, {read(6), 0},
			{updated(actionActivity, 8, true), -1}}},
		{"a markRead to below what was read back", staff, []step{
			{read(3), 0}, {updated(actionActivity, 6, true), -1}}},
		{"a created thread or a pin", staff, []step{
			{&event{kind: itemConversation, conversation: name}, -1}, {updated(actionActivity, 6, true), -1}}},
		{"another thread", staff, []step{{func() *event { e := updated(actionActivity, 6, true); e.conversation = "conversations/x"; return e }(), -1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cs convStates
			cs.keep(readBack, 100)
			for i, s := range tc.steps {
				if s.e.kind == itemConversationRead {
					cs.read(s.e)
					continue
				}
				own, ok := cs.follow(s.e, tc.id)
				if s.unread < 0 {
					require.False(t, ok, "step %d: read back", i)
					continue
				}
				require.True(t, ok, "step %d", i)
				got := own.conversation(s.e.updated.GetConversation())
				require.Equal(t, s.unread, got.GetUnreadCount(), "step %d", i)
				require.True(t, got.GetPinned() && got.GetMuted(), "the caller's own pin and mute")
				require.Equal(t, s.e.updated.GetConversation().GetLastMessageSeq(), got.GetLastMessageSeq(), "the event's shared fields")
				require.Equal(t, tc.id.IsStaff(), got.GetAwaitingReplySince() != nil, "needs reply is staff only")
				require.Equal(t, tc.id.IsStaff(), got.GetAssignee() != "", "the assignee is staff only")
				require.Zero(t, s.e.updated.GetConversation().GetUnreadCount(), "the shared event is not changed")
			}
		})
	}

	var cs convStates
	for i := range maxConvStates + 10 {
		cs.keep(&conversationv1.Conversation{Name: name + string(rune('a'+i%26)) + string(rune('0'+i/26))}, 0)
	}
	require.LessOrEqual(t, len(cs.m), maxConvStates, "bounded")
}

// renderFixture is a conversation as an event carries it.
func renderFixture() *conversationv1.Conversation {
	return &conversationv1.Conversation{Name: "conversations/c", Patient: "patients/pa", PatientDisplayName: "Alice Johnson",
		State: conversationv1.Conversation_ACTIVE, CreateTime: timestamppb.Now(), LastMessageTime: timestamppb.Now(),
		LastMessagePreview: "Your crown is ready", UnreadCount: 3, LastMessageSeq: 12, Assignee: "users/amy", AssigneeDisplayName: "Amy"}
}

// TestRenderIsTheAPIsJSON: an event's data is {"<field>": …} around exactly
// what the REST API's marshaler writes for the resource.
func TestRenderIsTheAPIsJSON(t *testing.T) {
	s := &Server{marshaler: newMarshaler()}
	c := renderFixture()
	want, err := s.marshaler.Marshal(c)
	require.NoError(t, err)
	got, err := s.render("conversation", c)
	require.NoError(t, err)
	var compact bytes.Buffer // protojson adds whitespace at random
	require.NoError(t, json.Compact(&compact, want))
	require.Equal(t, `{"conversation":`+compact.String()+`}`, string(got))
}

func BenchmarkRenderConversation(b *testing.B) {
	s := &Server{marshaler: newMarshaler()}
	c := renderFixture()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.render("conversation", c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkConversationViewFanout is one conversation.updated built from
// the event for 20 staff streams of a practice that follow the thread (the
// per-stream part of the fan-out: follow, the shared view's lookup; one
// render in all).
//
//	go test ./gateway -run '^$' -bench ConversationViewFanout -benchmem
func BenchmarkConversationViewFanout(b *testing.B) {
	s := &Server{marshaler: newMarshaler(), metrics: newMetrics()}
	const name = "conversations/c"
	streams := make([]*eventStream, 20)
	for i := range streams {
		streams[i] = &eventStream{s: s, id: auth.Identity{Practice: "p", Subject: "doc" + string(rune('a'+i)), Role: auth.RoleDentist}}
		streams[i].views.keep(&conversationv1.Conversation{Name: name, UnreadCount: int32(i % 3), LastMessageSeq: 5}, 0)
	}
	c := renderFixture()
	c.Name = name
	b.ReportAllocs()
	seq := int64(5)
	for b.Loop() {
		seq++
		c := proto.Clone(c).(*conversationv1.Conversation)
		c.LastMessageSeq = int32(seq)
		e := &event{kind: itemConversation, conversation: name, seq: uint64(seq), action: actionActivity, updated: &conversationv1.ConversationUpdated{
			Meta: &typev1.EventMeta{Practice: "p", Action: actionActivity}, MessageSeq: seq, MessageFromPatient: false,
			Conversation: c}}
		for _, st := range streams {
			known, ok := st.knownView(e)
			if !ok {
				b.Fatal("read back")
			}
			if _, err := st.conversationView(context.Background(), e, known, ok); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// TestShallowConversationCopiesEveryField sets every field of a
// Conversation (whatever fields it has) and wants them all in the copy.
func TestShallowConversationCopiesEveryField(t *testing.T) {
	c := &conversationv1.Conversation{}
	m := c.ProtoReflect()
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		f := fields.Get(i)
		switch f.Kind() {
		case protoreflect.StringKind:
			m.Set(f, protoreflect.ValueOfString("v"+string(f.Name())))
		case protoreflect.BoolKind:
			m.Set(f, protoreflect.ValueOfBool(true))
		case protoreflect.Int32Kind:
			m.Set(f, protoreflect.ValueOfInt32(int32(i+1)))
		case protoreflect.EnumKind:
			m.Set(f, protoreflect.ValueOfEnum(protoreflect.EnumNumber(1)))
		case protoreflect.MessageKind:
			m.Set(f, protoreflect.ValueOfMessage(timestamppb.New(time.Unix(int64(i+1), 0)).ProtoReflect()))
		default:
			t.Fatalf("field %s of kind %s: teach the test (and shallowConversation) about it", f.Name(), f.Kind())
		}
	}
	got := shallowConversation(c)
	require.True(t, proto.Equal(c, got), "copy %v of %v", got, c)
	require.NotSame(t, c, got)
	got.UnreadCount, got.Assignee = 99, ""
	require.EqualValues(t, 8, c.GetUnreadCount(), "the original is not changed through the copy")
	require.Equal(t, "vassignee", c.GetAssignee())
	require.True(t, proto.Equal(&conversationv1.Conversation{}, shallowConversation(nil)))
}
