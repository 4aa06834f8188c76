package gateway

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
)

// A conversation.updated is the thread as the caller sees it: the thread's
// shared fields, which the event carries, and the caller's own unreadCount,
// pinned and muted, which it does not. Reading the thread back for every
// user at every event (a ListConversations each) was the fan-out's largest
// cost, so each stream keeps its caller's own fields per thread, read back
// once, and follows them along the events it receives in stream order:
//
//   - a new message (conversation.activity, carrying message_seq and its
//     side) newer than every message the state accounts for adds one
//     unread when it is from the other side; an older one changes nothing
//     when it is known to be in the state: the hub had dispatched it before
//     the state was read back (so it was committed), or it was projected in
//     order at or below the newest message the read back had (the event's
//     thread has it as its newest, so the read back's newest was projected
//     at the same time or after it: last_message_seq only grows); any other
//     older one (projected out of order, so maybe after the read back, or
//     one counted already and received again) discards the state;
//   - an assignment or archive changes no per-user field;
//   - the caller's own markRead (conversation.read, reader-addressed, in
//     the same stream as the thread's updates) up to a watermark at or
//     past every message the state accounts for leaves nothing unread
//     that the state knows of: unread 0, and the state now accounts for
//     every message up to the watermark. A message at or below the
//     watermark changes nothing from then on (it is read, whichever side
//     it is from, counted before or not); a newer one counts as above. A
//     markRead to below the state's newest message (some of the messages
//     between may be unread) discards the state;
//   - pin/mute (userstate.changed) discard the state, and so does any
//     event this does not know.
//
// A discarded or unknown state is read back (ListConversations, as before),
// so a view is never built from state that an event seen since may have
// changed. Read back state is at least as new as the event being rendered
// (the event was published after its commit), and only messages newer than
// the thread's newest at that read are counted on top of it.

// convState is the caller's own fields of one thread, as of seq.
type convState struct {
	unread        int32
	pinned, muted bool
	// seq is the newest message the state accounts for: the thread's
	// last_message_seq when read back, then each counted message's.
	seq int64
	// readSeq is the thread's last_message_seq when read back.
	readSeq int64
	// readTo is the caller's read watermark as their own markRead gave
	// it since (0: none): no message at or below it is unread.
	readTo int64
	// pos is the hub's conversation stream position when the state was
	// read back: every event up to it was committed before.
	pos uint64
}

// maxConvStates bounds the threads a stream keeps state for (a staff
// stream sees every thread of the practice); past it one is dropped and is
// read back at its next event.
const maxConvStates = 512

// convStates is one stream's per-thread state, owned by its goroutine.
type convStates struct {
	m map[string]*convState
}

// Actions of ConversationUpdated events (conversation service).
const (
	actionActivity = "conversation.activity"
	actionAssign   = "conversation.assign"
	actionArchive  = "conversation.archive"
)

// ownView is what a view of a thread built from its event depends on
// besides the event: whether the viewer sees the practice-side fields, and
// their own fields. Views are shared by it (event.eventViews).
type ownView struct {
	staff         bool
	unread        int32
	pinned, muted bool
}

// conversation is the event's thread c as a viewer of v sees it (a copy).
func (v ownView) conversation(c *conversationv1.Conversation) *conversationv1.Conversation {
	c = shallowConversation(c)
	c.UnreadCount, c.Pinned, c.Muted = v.unread, v.pinned, v.muted
	if !v.staff {
		// As the conversation service shows a thread to a patient.
		c.AwaitingReplySince, c.Assignee, c.AssigneeDisplayName = nil, "", ""
	}
	return c
}

// shallowConversation is a copy of c's fields (an empty thread for nil)
// that shares its Timestamps, which nobody changes: a view is rendered, not
// edited below its own fields. proto.Clone's reflective walk and its
// Timestamps were ~1 % of the all-in-one's CPU at 8 senders (BENCHMARKS.md,
// alloc25). Unknown fields are not copied: the view's JSON has none.
// TestShallowConversationCopiesEveryField fails when a field is added to
// Conversation and not here.
func shallowConversation(c *conversationv1.Conversation) *conversationv1.Conversation {
	if c == nil {
		return &conversationv1.Conversation{}
	}
	return &conversationv1.Conversation{
		Name:                c.Name,
		Patient:             c.Patient,
		PatientDisplayName:  c.PatientDisplayName,
		State:               c.State,
		CreateTime:          c.CreateTime,
		LastMessageTime:     c.LastMessageTime,
		LastMessagePreview:  c.LastMessagePreview,
		UnreadCount:         c.UnreadCount,
		Pinned:              c.Pinned,
		Muted:               c.Muted,
		LastMessageSeq:      c.LastMessageSeq,
		AwaitingReplySince:  c.AwaitingReplySince,
		Assignee:            c.Assignee,
		AssigneeDisplayName: c.AssigneeDisplayName,
	}
}

// follow applies e to the caller's state of e's thread and returns what the
// caller's view of it depends on; false when it must be read back.
func (cs *convStates) follow(e *event, id auth.Identity) (ownView, bool) {
	st := cs.m[e.conversation]
	if st == nil {
		return ownView{}, false
	}
	u := e.updated
	if u == nil || u.GetConversation() == nil {
		delete(cs.m, e.conversation) // created, pin/mute: read back
		return ownView{}, false
	}
	switch e.action {
	case actionActivity:
		seq := u.GetMessageSeq()
		switch {
		case seq > st.seq:
			if u.GetMessageFromPatient() != id.IsPatient() {
				st.unread++
			}
			st.seq = seq
		case seq > 0 && seq <= st.readTo:
			// Read by the caller's markRead since: never unread.
		case seq > 0 && (e.seq <= st.pos || seq <= st.readSeq && int64(u.GetConversation().GetLastMessageSeq()) == seq):
			// In what was read back: dispatched before it, or projected in
			// order at or below the read back's newest message. Without the
			// second, a fan-out that lags the projection (so that every read
			// back is ahead of the stream) would read back at every event.
		default: // unknown, out of order, or maybe not in what was read back
			delete(cs.m, e.conversation)
			return ownView{}, false
		}
	case actionAssign, actionArchive:
	default:
		delete(cs.m, e.conversation)
		return ownView{}, false
	}
	return ownView{staff: seesPracticeFields(id), unread: st.unread, pinned: st.pinned, muted: st.muted}, true
}

// keep records the caller's fields of a thread read back when the hub's
// conversation stream position was pos.
func (cs *convStates) keep(c *conversationv1.Conversation, pos uint64) {
	if cs.m == nil {
		cs.m = map[string]*convState{}
	}
	if _, ok := cs.m[c.GetName()]; !ok && len(cs.m) >= maxConvStates {
		for k := range cs.m {
			delete(cs.m, k)
			break
		}
	}
	cs.m[c.GetName()] = &convState{unread: c.GetUnreadCount(), pinned: c.GetPinned(), muted: c.GetMuted(),
		seq: int64(c.GetLastMessageSeq()), readSeq: int64(c.GetLastMessageSeq()), pos: pos}
}

// read is the caller's own markRead of e's thread (conversation.read): up
// to at least the newest message the state accounts for, nothing is
// unread; otherwise the unread count is no longer known.
func (cs *convStates) read(e *event) {
	st := cs.m[e.conversation]
	if st == nil {
		return
	}
	if e.readTo <= 0 || e.readTo < st.seq {
		delete(cs.m, e.conversation)
		return
	}
	// The state's seq is at least its readTo, so e.readTo is past both.
	st.unread, st.seq, st.readTo = 0, e.readTo, e.readTo
}

// drop discards the caller's state of e's thread (a pin or mute: read
// back).
func (cs *convStates) drop(e *event) { delete(cs.m, e.conversation) }

// conversationView is e's thread as the caller sees it: from the event and
// the stream's state of the thread when it has one (convStates), rendered
// once per distinct view (staff or patient, unreadCount, pinned, muted) and
// shared by every user who sees that one; read back otherwise, once per
// user and shared by that user's tabs. Every tab follows the event in its
// own state, whichever tab renders. The read back is not tied to the
// connection that makes it, so a tab that leaves meanwhile does not fail
// the others.
// known and ok are knownView's answer for e.
func (st *eventStream) conversationView(ctx context.Context, e *event, known ownView, ok bool) ([]byte, error) {
	if ok {
		v := e.eventView(known)
		v.once.Do(func() {
			v.data, v.err = st.s.render("conversation", known.conversation(e.updated.GetConversation()))
			st.s.metrics.convViews.WithLabelValues("event").Inc()
			if e.pc != nil {
				e.pc.composed.Add(1)
			}
		})
		return v.data, v.err
	}
	v := e.convView(st.id)
	v.once.Do(func() {
		pos := st.s.hub.position().c // read first: everything up to it is in the read back
		conv, err := st.conversation(context.WithoutCancel(ctx), e.conversation)
		if err == nil {
			st.views.keep(conv, pos)
			v.data, err = st.s.render("conversation", conv)
		}
		v.err = err
		st.s.metrics.convViews.WithLabelValues("fetch").Inc()
		if e.pc != nil {
			e.pc.fetched.Add(1)
		}
	})
	return v.data, v.err
}

// knownView follows e in the stream's state of its thread and returns what
// the caller's view built from it depends on; false when the view must be
// read back (the state is dropped then). Call it once per event, in stream
// order.
func (st *eventStream) knownView(e *event) (ownView, bool) {
	if e.kind == itemConversation {
		return st.views.follow(e, st.id)
	}
	st.views.drop(e) // pin or mute: read back
	return ownView{}, false
}

// seesPracticeFields: staff (and the system) see a thread's practice-side
// fields (needs reply, assignee); a patient does not.
func seesPracticeFields(id auth.Identity) bool { return id.IsStaff() || id.IsSystem() }

// conversation fetches the thread as the caller sees it (their unreadCount,
// pinned, muted). It lists the one row rather than getting it: a pushed list
// row is not the caller opening the thread, which the audit log records.
func (st *eventStream) conversation(ctx context.Context, name string) (*conversationv1.Conversation, error) {
	ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(ctx, st.md), upstreamTimeout)
	defer cancel()
	resp, err := st.s.conversations.ListConversations(ctx, &conversationv1.ListConversationsRequest{Names: []string{name}, PageSize: 1})
	if err != nil {
		return nil, err
	}
	if len(resp.GetConversations()) == 0 {
		return nil, status.Error(codes.NotFound, "Conversation not found")
	}
	return resp.GetConversations()[0], nil
}
