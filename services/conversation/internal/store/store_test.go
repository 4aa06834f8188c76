package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

func newStore(t *testing.T, b testkit.Backend) *store.Store {
	t.Helper()
	s, err := store.New(context.Background(), testkit.OpenDB(t, b))
	require.NoError(t, err)
	return s
}

func event() domain.Event {
	id := ids.New()
	return domain.Event{ID: id, Subject: "clinicchat.conversation.test", Msg: &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id}}}
}

func none(domain.Conversation) []domain.Event { return nil }

// allow is a MarkRead check that lets every caller in.
func allow(domain.Conversation) error { return nil }

var (
	staff   = domain.Viewer{Principal: "users/u1"}
	staff2  = domain.Viewer{Principal: "users/u2"}
	patient = domain.Viewer{Principal: "patients/pa", IsPatient: true}
)

func create(t *testing.T, s *store.Store, patientID, name string, at time.Time) domain.Conversation {
	t.Helper()
	c, _, err := s.Create(context.Background(), domain.Conversation{Practice: "p1", ID: ids.New(), PatientID: patientID,
		PatientDisplayName: name, State: domain.Active, CreateTime: at}, func(domain.Conversation) []domain.Event { return []domain.Event{event()} })
	require.NoError(t, err)
	return c
}

func apply(t *testing.T, s *store.Store, c domain.Conversation, seq int64, fromPatient bool, at time.Time) bool {
	t.Helper()
	sender := "users/u1"
	if fromPatient {
		sender = "patients/" + c.PatientID
	}
	out, err := s.ApplyMessages(context.Background(), []domain.MessageApplied{{Practice: "p1", ConversationID: c.ID, Seq: seq,
		FromPatient: fromPatient, Sender: sender, Time: at, Preview: "msg"}}, noEvents)
	require.NoError(t, err)
	return out[0] == domain.Applied
}

func noEvents(domain.MessageApplied, domain.Conversation, []string) []domain.Event { return nil }

func TestRepositoryContract(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			t0 := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)

			t.Run("find or start: one thread per patient", func(t *testing.T) {
				s := newStore(t, b)
				a := create(t, s, "pa", "Alice", t0)
				again, created, err := s.Create(ctx, domain.Conversation{Practice: "p1", ID: ids.New(), PatientID: "pa",
					PatientDisplayName: "Alice", State: domain.Active, CreateTime: t0}, none)
				require.NoError(t, err)
				require.False(t, created)
				require.Equal(t, a.ID, again.ID)
				other, created, err := s.Create(ctx, domain.Conversation{Practice: "p2", ID: ids.New(), PatientID: "pa",
					PatientDisplayName: "Alice", State: domain.Active, CreateTime: t0}, none)
				require.NoError(t, err)
				require.True(t, created, "another practice's patient is another thread")
				require.NotEqual(t, a.ID, other.ID)
				_, err = s.Get(ctx, "p2", a.ID, staff)
				require.ErrorIs(t, err, domain.ErrNotFound)
			})

			t.Run("pinned first, then newest message first, with keyset pages", func(t *testing.T) {
				s := newStore(t, b)
				a := create(t, s, "pa", "Alice Johnson", t0)
				bb := create(t, s, "pb", "Bob Stone", t0.Add(time.Minute))
				c := create(t, s, "pc", "Carol Davis", t0.Add(2*time.Minute))
				apply(t, s, a, 1, true, t0.Add(time.Hour))
				tr := true
				_, err := s.SetFlags(ctx, "p1", c.ID, staff, domain.UserFlags{Pinned: &tr}, none)
				require.NoError(t, err)

				list, next, err := s.List(ctx, domain.ListQuery{Practice: "p1", Viewer: staff, Limit: 2})
				require.NoError(t, err)
				require.Equal(t, []string{c.ID, a.ID}, idsOf(list))
				require.True(t, list[0].Pinned)
				require.Equal(t, 1, list[1].UnreadCount)
				require.NotNil(t, next)
				list, next, err = s.List(ctx, domain.ListQuery{Practice: "p1", Viewer: staff, Limit: 2, After: next})
				require.NoError(t, err)
				require.Equal(t, []string{bb.ID}, idsOf(list))
				require.Nil(t, next)

				// Pins are per user.
				list, _, err = s.List(ctx, domain.ListQuery{Practice: "p1", Viewer: staff2, Limit: 10})
				require.NoError(t, err)
				require.Equal(t, []string{a.ID, c.ID, bb.ID}, idsOf(list))

				// Name filter: word prefixes.
				list, _, err = s.List(ctx, domain.ListQuery{Practice: "p1", Viewer: staff, Limit: 10, Words: []string{"car", "dav"}})
				require.NoError(t, err)
				require.Equal(t, []string{c.ID}, idsOf(list))

				// A patient sees only their own thread.
				list, _, err = s.List(ctx, domain.ListQuery{Practice: "p1", PatientID: "pa", Viewer: patient, Limit: 10})
				require.NoError(t, err)
				require.Equal(t, []string{a.ID}, idsOf(list))
			})

			t.Run("read watermark: per user, capped, never lowered; unread counts the other side", func(t *testing.T) {
				s := newStore(t, b)
				a := create(t, s, "pa", "Alice", t0)
				require.True(t, apply(t, s, a, 1, false, t0.Add(time.Minute)))
				require.True(t, apply(t, s, a, 2, true, t0.Add(2*time.Minute)))
				require.True(t, apply(t, s, a, 3, true, t0.Add(3*time.Minute)))
				require.False(t, apply(t, s, a, 3, true, t0.Add(3*time.Minute)), "replay")

				c, err := s.Get(ctx, "p1", a.ID, staff)
				require.NoError(t, err)
				require.Equal(t, 2, c.UnreadCount)
				require.EqualValues(t, 3, c.LastMessageSeq)
				p, err := s.Get(ctx, "p1", a.ID, patient)
				require.NoError(t, err)
				require.Equal(t, 1, p.UnreadCount)

				var advanced []bool
				var upTo []int64 // the watermark each event carries
				rec := func(c domain.Conversation, adv bool) []domain.Event {
					require.Equal(t, a.Name(), c.Name())
					advanced, upTo = append(advanced, adv), append(upTo, c.ReadSeq)
					return nil
				}
				c, err = s.MarkRead(ctx, "p1", a.ID, staff, 99, allow, rec)
				require.NoError(t, err)
				require.EqualValues(t, 3, c.ReadSeq, "capped at the newest message")
				require.Zero(t, c.UnreadCount)
				c, err = s.MarkRead(ctx, "p1", a.ID, staff, 1, allow, rec)
				require.NoError(t, err)
				require.EqualValues(t, 3, c.ReadSeq, "never lowered")
				require.Equal(t, []bool{true, false}, advanced)
				c, err = s.Get(ctx, "p1", a.ID, staff2)
				require.NoError(t, err)
				require.Equal(t, 2, c.UnreadCount, "another staff user's count is their own")
				c, err = s.MarkRead(ctx, "p1", a.ID, staff2, 2, allow, rec)
				require.NoError(t, err)
				require.EqualValues(t, 2, c.ReadSeq)
				require.Equal(t, 1, c.UnreadCount)
				c, err = s.MarkRead(ctx, "p1", a.ID, staff2, 3, allow, rec)
				require.NoError(t, err)
				require.EqualValues(t, 3, c.ReadSeq, "an existing watermark raised")
				require.Zero(t, c.UnreadCount)
				c, err = s.MarkRead(ctx, "p1", a.ID, staff2, 3, allow, rec)
				require.NoError(t, err)
				require.EqualValues(t, 3, c.ReadSeq)
				require.Equal(t, []bool{true, false, true, true, false}, advanced, "the same watermark again does not advance")
				require.Equal(t, []int64{3, 3, 2, 3, 3}, upTo)
				empty := create(t, s, "pe", "Eve", t0)
				advanced = nil
				c, err = s.MarkRead(ctx, "p1", empty.ID, staff2, 5, allow, func(_ domain.Conversation, adv bool) []domain.Event {
					advanced = append(advanced, adv)
					return nil
				})
				require.NoError(t, err)
				require.Zero(t, c.ReadSeq, "a thread without messages: nothing to read")
				require.Equal(t, []bool{false}, advanced)
				c, err = s.Get(ctx, "p1", a.ID, staff)
				require.NoError(t, err)
				require.EqualValues(t, 3, c.ReadSeq, "the other staff user's own watermark")
				_, err = s.MarkRead(ctx, "p1", "missing", staff, 1, allow, rec)
				require.ErrorIs(t, err, domain.ErrNotFound)

				// check sees the thread before the write; its error writes nothing.
				refused := errors.New("refused")
				var seen domain.Conversation
				_, err = s.MarkRead(ctx, "p1", a.ID, patient, 2, func(c domain.Conversation) error {
					seen = c
					return refused
				}, func(domain.Conversation, bool) []domain.Event {
					t.Error("a refused markRead wrote its events")
					return nil
				})
				require.ErrorIs(t, err, refused)
				require.Equal(t, a.ID, seen.ID)
				require.Equal(t, "pa", seen.PatientID)
				require.EqualValues(t, 3, seen.LastMessageSeq)
				p, err = s.Get(ctx, "p1", a.ID, patient)
				require.NoError(t, err)
				require.Zero(t, p.ReadSeq, "nothing written")
				require.Equal(t, 1, p.UnreadCount)
				// upTo 0: everything; the answer's watermark and count are the stored ones.
				p, err = s.MarkRead(ctx, "p1", a.ID, patient, 0, allow, rec)
				require.NoError(t, err)
				require.EqualValues(t, 3, p.ReadSeq)
				require.Zero(t, p.UnreadCount)
				require.Equal(t, []bool{true}, advanced[len(advanced)-1:])
				stored, err := s.Get(ctx, "p1", a.ID, patient)
				require.NoError(t, err)
				require.Equal(t, p.ReadSeq, stored.ReadSeq)
				require.Equal(t, p.UnreadCount, stored.UnreadCount)
			})

			t.Run("archive idle threads; a new message reactivates", func(t *testing.T) {
				s := newStore(t, b)
				old := create(t, s, "pa", "Alice", t0)
				fresh := create(t, s, "pb", "Bob", t0.Add(400*24*time.Hour))
				n, err := s.ArchiveIdle(ctx, t0.Add(365*24*time.Hour), 10, func(domain.Conversation) []domain.Event { return []domain.Event{event()} })
				require.NoError(t, err)
				require.Equal(t, 1, n)
				list, _, err := s.List(ctx, domain.ListQuery{Practice: "p1", Viewer: staff, Limit: 10})
				require.NoError(t, err)
				require.Equal(t, []string{fresh.ID}, idsOf(list))
				list, _, err = s.List(ctx, domain.ListQuery{Practice: "p1", Viewer: staff, Limit: 10, Archived: true})
				require.NoError(t, err)
				require.Equal(t, []string{old.ID}, idsOf(list))
				list, _, err = s.List(ctx, domain.ListQuery{Practice: "p1", Viewer: staff, Limit: 10, IDs: []string{old.ID, fresh.ID, "missing"}})
				require.NoError(t, err)
				require.ElementsMatch(t, []string{old.ID, fresh.ID}, idsOf(list), "a names filter ignores the state")
				apply(t, s, old, 1, true, t0.Add(500*24*time.Hour))
				c, err := s.Get(ctx, "p1", old.ID, staff)
				require.NoError(t, err)
				require.Equal(t, domain.Active, c.State)
			})

			t.Run("notification recipients: the patient, or unmuted staff participants", func(t *testing.T) {
				s := newStore(t, b)
				a := create(t, s, "pa", "Alice", t0)
				var got [][]string
				capture := func(_ domain.MessageApplied, _ domain.Conversation, r []string) []domain.Event {
					got = append(got, r)
					return nil
				}
				_, err := s.ApplyMessages(ctx, []domain.MessageApplied{{Practice: "p1", ConversationID: a.ID, Seq: 1, Sender: "users/u1", Time: t0}}, capture)
				require.NoError(t, err)
				tr := true
				_, err = s.SetFlags(ctx, "p1", a.ID, staff2, domain.UserFlags{Muted: &tr}, none)
				require.NoError(t, err)
				_, err = s.ApplyMessages(ctx, []domain.MessageApplied{{Practice: "p1", ConversationID: a.ID, Seq: 2, FromPatient: true, Sender: "patients/pa", Time: t0}}, capture)
				require.NoError(t, err)
				require.Equal(t, [][]string{{"patients/pa"}, {"users/u1"}}, got, "u2 muted the thread")
			})

			t.Run("no recipients read where no notification is requested", func(t *testing.T) {
				s := newStore(t, b)
				s.NoRecipients = true
				a := create(t, s, "pa", "Alice", t0)
				var got [][]string
				capture := func(_ domain.MessageApplied, _ domain.Conversation, r []string) []domain.Event {
					got = append(got, r)
					return nil
				}
				// A staff message (u1 joins), then patient messages alone and
				// two in one batch: the patient's have no recipients.
				_, err := s.ApplyMessages(ctx, []domain.MessageApplied{{Practice: "p1", ConversationID: a.ID, Seq: 1, Sender: "users/u1", Time: t0}}, capture)
				require.NoError(t, err)
				_, err = s.ApplyMessages(ctx, []domain.MessageApplied{{Practice: "p1", ConversationID: a.ID, Seq: 2, FromPatient: true, Sender: "patients/pa", Time: t0}}, capture)
				require.NoError(t, err)
				_, err = s.ApplyMessages(ctx, []domain.MessageApplied{
					{Practice: "p1", ConversationID: a.ID, Seq: 3, FromPatient: true, Sender: "patients/pa", Time: t0},
					{Practice: "p1", ConversationID: a.ID, Seq: 4, Sender: "users/u2", Time: t0}}, capture)
				require.NoError(t, err)
				require.Equal(t, [][]string{{"patients/pa"}, nil, nil, {"patients/pa"}}, got)
				// The staff senders still became participants (u2 in the batch).
				s.NoRecipients = false
				got = nil
				_, err = s.ApplyMessages(ctx, []domain.MessageApplied{{Practice: "p1", ConversationID: a.ID, Seq: 5, FromPatient: true, Sender: "patients/pa", Time: t0}}, capture)
				require.NoError(t, err)
				require.Equal(t, [][]string{{"users/u1", "users/u2"}}, got)
			})

			t.Run("needs reply: the oldest patient message no staff message followed, whatever the arrival order", func(t *testing.T) {
				s := newStore(t, b)
				a := create(t, s, "pa", "Alice", t0)
				bb := create(t, s, "pb", "Bob", t0)
				cc := create(t, s, "pc", "Carol", t0)
				get := func(c domain.Conversation) domain.Conversation {
					t.Helper()
					got, err := s.Get(ctx, "p1", c.ID, staff)
					require.NoError(t, err)
					return got
				}
				require.True(t, get(a).AwaitingReplySince.IsZero(), "no messages")
				apply(t, s, a, 1, true, t0.Add(1*time.Minute))
				apply(t, s, a, 2, true, t0.Add(2*time.Minute))
				require.True(t, t0.Add(time.Minute).Equal(get(a).AwaitingReplySince), "the oldest unanswered patient message")
				// Staff message 4 arrives before patient message 3: 3 is answered.
				apply(t, s, a, 4, false, t0.Add(4*time.Minute))
				require.True(t, get(a).AwaitingReplySince.IsZero(), "staff had the last word")
				apply(t, s, a, 3, true, t0.Add(3*time.Minute))
				require.True(t, get(a).AwaitingReplySince.IsZero(), "a late patient message before the staff reply stays answered")
				require.Equal(t, int64(4), get(a).LastMessageSeq, "a late message leaves the newest one's fields")
				require.True(t, t0.Add(4*time.Minute).Equal(get(a).LastMessageTime))
				apply(t, s, a, 6, true, t0.Add(6*time.Minute))
				apply(t, s, a, 5, true, t0.Add(5*time.Minute))
				require.True(t, t0.Add(5*time.Minute).Equal(get(a).AwaitingReplySince))

				apply(t, s, bb, 1, true, t0.Add(30*time.Second)) // waiting longest
				apply(t, s, cc, 1, false, t0.Add(time.Minute))   // staff wrote last

				list, next, err := s.List(ctx, domain.ListQuery{Practice: "p1", Viewer: staff, AwaitingReply: true, Limit: 1})
				require.NoError(t, err)
				require.Equal(t, []string{bb.ID}, idsOf(list))
				require.NotNil(t, next)
				require.True(t, next.Awaiting)
				list, next, err = s.List(ctx, domain.ListQuery{Practice: "p1", Viewer: staff, AwaitingReply: true, Limit: 1, After: next})
				require.NoError(t, err)
				require.Equal(t, []string{a.ID}, idsOf(list))
				require.Nil(t, next)
			})

			t.Run("assignment: only staff the practice has seen, shared, filterable", func(t *testing.T) {
				s := newStore(t, b)
				a := create(t, s, "pa", "Alice", t0)
				bb := create(t, s, "pb", "Bob", t0)
				var got []domain.Conversation
				capture := func(c domain.Conversation) []domain.Event { got = append(got, c); return []domain.Event{event()} }

				_, err := s.Assign(ctx, "p1", a.ID, "users/u2", staff, capture)
				require.ErrorContains(t, err, "users/u2", "never seen: refused, naming them")
				require.Empty(t, got)
				require.NoError(t, s.SaveStaff(ctx, domain.StaffMember{Practice: "p2", User: "users/u2", DisplayName: "Other", Role: "dentist", UpdateTime: t0}))
				_, err = s.Assign(ctx, "p1", a.ID, "users/u2", staff, capture)
				require.Error(t, err, "seen by another practice only")

				require.NoError(t, s.SaveStaff(ctx, domain.StaffMember{Practice: "p1", User: "users/u2", DisplayName: "Dr Old", Role: "dentist", UpdateTime: t0}))
				require.NoError(t, s.SaveStaff(ctx, domain.StaffMember{Practice: "p1", User: "users/u2", DisplayName: "Dr Grace Lee", Role: "dentist", UpdateTime: t0}))
				require.NoError(t, s.SaveStaff(ctx, domain.StaffMember{Practice: "p1", User: "users/u1", DisplayName: "Amy Front", Role: "front_desk", UpdateTime: t0}))
				c, err := s.Assign(ctx, "p1", a.ID, "users/u2", staff, capture)
				require.NoError(t, err)
				require.Equal(t, "users/u2", c.Assignee)
				require.Equal(t, "Dr Grace Lee", c.AssigneeDisplayName, "the latest name")
				// A token without a name claim keeps the name the practice knows.
				require.NoError(t, s.SaveStaff(ctx, domain.StaffMember{Practice: "p1", User: "users/u2", Role: "dentist", UpdateTime: t0}))
				c, err = s.Get(ctx, "p1", a.ID, staff)
				require.NoError(t, err)
				require.Equal(t, "Dr Grace Lee", c.AssigneeDisplayName, "a nameless token keeps the known name")
				require.Len(t, got, 1)
				require.Equal(t, "users/u2", got[0].Assignee)

				other, err := s.Get(ctx, "p1", a.ID, staff2)
				require.NoError(t, err)
				require.Equal(t, "users/u2", other.Assignee, "shared by the practice")
				list, _, err := s.List(ctx, domain.ListQuery{Practice: "p1", Viewer: staff, Assignee: "users/u2", Limit: 10})
				require.NoError(t, err)
				require.Equal(t, []string{a.ID}, idsOf(list))
				list, _, err = s.List(ctx, domain.ListQuery{Practice: "p1", Viewer: staff, Assignee: "users/u1", Limit: 10})
				require.NoError(t, err)
				require.Empty(t, list)

				c, err = s.Assign(ctx, "p1", a.ID, "", staff, capture)
				require.NoError(t, err)
				require.Empty(t, c.Assignee)
				require.Empty(t, c.AssigneeDisplayName)
				_, err = s.Assign(ctx, "p2", bb.ID, "", staff, capture)
				require.ErrorIs(t, err, domain.ErrNotFound, "another practice's thread")

				staffList, more, err := s.ListStaff(ctx, "p1", nil, 1)
				require.NoError(t, err)
				require.True(t, more)
				require.Equal(t, "users/u1", staffList[0].User)
				staffList, more, err = s.ListStaff(ctx, "p1", &domain.StaffCursor{DisplayName: staffList[0].DisplayName, User: staffList[0].User}, 10)
				require.NoError(t, err)
				require.False(t, more)
				require.Len(t, staffList, 1)
				require.Equal(t, "Dr Grace Lee", staffList[0].DisplayName)
			})

			t.Run("templates: per practice, by title, capped, changes carry their events", func(t *testing.T) {
				s := newStore(t, b)
				n := 0
				count := func(domain.Template) []domain.Event { n++; return []domain.Event{event()} }
				mk := func(practice, title string) domain.Template {
					t.Helper()
					tpl, err := s.CreateTemplate(ctx, domain.Template{Practice: practice, ID: ids.New(), Title: title, Text: "Hi {patient.firstName}", UpdateTime: t0}, count)
					require.NoError(t, err)
					return tpl
				}
				recall := mk("p1", "Recall")
				mk("p1", "Appointment moved")
				mk("p2", "Other practice")
				list, err := s.ListTemplates(ctx, "p1")
				require.NoError(t, err)
				require.Len(t, list, 2)
				require.Equal(t, "Appointment moved", list[0].Title)

				text := "See you soon, {patient.displayName}"
				got, err := s.UpdateTemplate(ctx, "p1", recall.ID, nil, &text, t0.Add(time.Hour), count)
				require.NoError(t, err)
				require.Equal(t, "Recall", got.Title)
				require.Equal(t, text, got.Text)
				require.True(t, t0.Add(time.Hour).Equal(got.UpdateTime))
				_, err = s.UpdateTemplate(ctx, "p2", recall.ID, nil, &text, t0, count)
				require.ErrorIs(t, err, domain.ErrTemplateNotFound, "another practice's template")
				require.ErrorIs(t, s.DeleteTemplate(ctx, "p2", recall.ID, count), domain.ErrTemplateNotFound)
				require.NoError(t, s.DeleteTemplate(ctx, "p1", recall.ID, count))
				list, err = s.ListTemplates(ctx, "p1")
				require.NoError(t, err)
				require.Len(t, list, 1)
				require.Equal(t, 5, n, "three creates, one update, one delete")

				for i := 0; i < domain.MaxTemplatesPerPractice; i++ {
					_, err = s.CreateTemplate(ctx, domain.Template{Practice: "p3", ID: ids.New(), Title: "t", Text: "x", UpdateTime: t0}, none2)
					require.NoError(t, err)
				}
				_, err = s.CreateTemplate(ctx, domain.Template{Practice: "p3", ID: ids.New(), Title: "t", Text: "x", UpdateTime: t0}, none2)
				require.ErrorIs(t, err, domain.ErrTooManyTemplates)
			})
		})
	}
}

func none2(domain.Template) []domain.Event { return nil }

func idsOf(cs []domain.Conversation) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}
