package gateway

import (
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/eventwire"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// event is one decoded, visible-to-someone event, shared by every
// connection it is queued on. It is never modified after dispatch.
type event struct {
	kind   itemKind
	stream int
	seq    uint64
	// practice is the practice id (decoded); patient the thread's patient
	// ("patients/p"); user the owner of a userstate change or the reader of
	// a conversation.read.
	practice, patient, user string
	// updated is a conversation.updated or conversation.created event's
	// payload: the thread's shared fields, and which message it projects
	// (convview.go renders a user's view from it without a fetch).
	updated *conversationv1.ConversationUpdated
	// message, for message events (not yet filtered for the viewer). With
	// raw set it holds only what routing reads (messageEventHead): the
	// message is raw, its encoding in the event, rendered from there.
	message *deliveryv1.Message
	raw     []byte
	// part is the message's place (1-based) among the messages of a
	// stream message that carries several (a receipt advance's echo,
	// MessageUpdated.messages), 0 for a stream message of one; last
	// marks the final part, more links to the next one. Each part is an
	// event of its own on the queues, with its own cursor (cursor.dk).
	part uint32
	last bool
	more *event
	// conversation, for conversation events: the thread whose view is
	// fetched once per user (convViews).
	conversation string
	// action is the event's EventMeta action (updated carries no meta:
	// decodeEvent reads it from the wire).
	action string
	// readTo is a conversation.read's watermark (up_to_seq): every message
	// of the thread at or below it from the other side is read.
	readTo int64

	// span is the fan-out span of the event when it was traced (invalid
	// otherwise): each connection's write is its child.
	span trace.SpanContext
	// dispatched is when the fan-out took a message.created off its
	// consumer (zero for other kinds): the recipient's stream times its
	// queueing and write from it (eventStages).
	dispatched time.Time
	// wroteAt is the event's EventMeta time (message.created only): when
	// the sender's transaction wrote it.
	wroteAt time.Time

	// views are the message rendered once per viewer class and shared by
	// every connection of that class (eventrender.go, renderMessage).
	views [viewClasses]renderedView
	// convViews are a conversation event's thread as each user sees it
	// (their unreadCount, pinned, muted): fetched and rendered once per
	// user and shared by that user's tabs, keyed by practice, principal
	// and role. (Views built from the event are eventViews.)
	convMu    sync.Mutex
	convViews map[string]*renderedView
	// eventViews are the views built from the event, by what they depend
	// on besides it (convview.go).
	eventViews map[ownView]*renderedView
	// pc counts the renders of a dispatched event (nil for catch-up).
	pc *practiceConns
}

// convView is the shared view of a conversation event for the user of id.
func (e *event) convView(id auth.Identity) *renderedView {
	return e.convViewKeyed(id.Practice + "\x00" + id.Principal() + "\x00" + id.Role)
}

// convViewKeyed is the shared view of a conversation event under key.
func (e *event) convViewKeyed(key string) *renderedView {
	e.convMu.Lock()
	defer e.convMu.Unlock()
	return sharedView(&e.convViews, key)
}

// eventView is the shared view of a conversation event built from it for
// viewers of own.
func (e *event) eventView(own ownView) *renderedView {
	e.convMu.Lock()
	defer e.convMu.Unlock()
	return sharedView(&e.eventViews, own)
}

// sharedView is (*m)[k], made (with the map) when missing. Locked by the
// caller (convMu).
func sharedView[K comparable](m *map[K]*renderedView, k K) *renderedView {
	if *m == nil {
		*m = map[K]*renderedView{}
	}
	v := (*m)[k]
	if v == nil {
		v = &renderedView{}
		(*m)[k] = v
	}
	return v
}

// Viewer classes of a message event: how a message looks depends on the
// viewer only through messageview.Locked, so every viewer who may read it
// (staff; the thread's patient when it is theirs, not sensitive, or they
// stepped up) shares one rendering, and every patient it is locked for
// shares the other.
const (
	viewUnlocked = iota
	viewLocked
	viewClasses
)

// renderedView is one class's encoded view of an event.
type renderedView struct {
	once sync.Once
	data []byte
	err  error
}

// visibleTo is the tenancy rule: events of the caller's practice only; for
// a patient only their own thread; a user's pin/mute/read only to them.
func (e *event) visibleTo(id auth.Identity) bool {
	if e.practice == "" || e.practice != id.Practice {
		return false
	}
	if e.kind == itemUserState || e.kind == itemConversationRead {
		return id.IsPrincipal(e.user)
	}
	if id.IsPatient() {
		return id.IsPrincipal(e.patient)
	}
	return id.IsStaff() || id.IsSystem()
}

// decodeEvent decodes a message of the hub's subjects; nil for subjects it
// does not stream and for undecodable payloads (logged). practice is the
// practice the caller expects the event to be of ("" when it does not
// know): the event's practice is then that string, not a copy. A stream
// message that carries several messages (a receipt advance's echo) is the
// first one's event, the others' linked from it (event.more).
func decodeEvent(log *zap.Logger, stream int, seq uint64, subject string, data []byte, practice string) *event {
	base := natsx.Base(subject)
	e := &event{stream: stream, seq: seq}
	var parts []*event // a stream message of several messages: e, then the others
	// The meta is read from the wire where it can be (eventwire.Unmarshal)
	// and the rest of the event unmarshalled without it.
	var head eventwire.Meta
	// decoded unmarshals data into ev, or logs why it is skipped.
	decoded := func(streamName string, ev eventwire.Event) bool {
		var err error
		if head, err = eventwire.Unmarshal(data, ev, practice, actionActivity, actionAssign, actionArchive); err != nil {
			log.Warn("undecodable event skipped", zap.String(logkeys.Stream, streamName), zap.Uint64("seq", seq), zap.Error(err))
			return false
		}
		return true
	}
	switch base {
	case natsx.SubjectMessageCreated, natsx.SubjectMessageUpdated, natsx.SubjectMessageStatusEcho:
		e.kind = itemMessageCreated
		if base != natsx.SubjectMessageCreated {
			e.kind = itemMessageUpdated
		}
		// The Message is kept as it came (rendered from its bytes:
		// renderMessage), only what routing needs read from it.
		if h, rest, ok := eventwire.SplitMeta(data, practice, actionActivity, actionAssign, actionArchive); ok {
			if raw, patient, msg, ok := messageEventHead(rest); ok {
				head, e.message, e.raw, e.patient = h, msg, raw, patient
				break
			}
			if base != natsx.SubjectMessageCreated {
				if raws, patient, msgs, ok := messageBatchHead(rest); ok {
					head, e.message, e.raw, e.patient = h, msgs[0], raws[0], patient
					parts = make([]*event, len(msgs))
					for i := range msgs {
						parts[i] = &event{message: msgs[i], raw: raws[i]}
					}
					parts[0] = e
					break
				}
			}
		}
		var ev interface {
			proto.Message
			GetMeta() *typev1.EventMeta
			GetMessage() *deliveryv1.Message
			GetPatient() string
		} = &deliveryv1.MessageCreated{}
		if base != natsx.SubjectMessageCreated {
			ev = &deliveryv1.MessageUpdated{}
		}
		if !decoded(natsx.StreamDelivery, ev) {
			return nil
		}
		e.message, e.patient = ev.GetMessage(), ev.GetPatient()
		if u, ok := ev.(*deliveryv1.MessageUpdated); ok && len(u.GetMessages()) > 0 {
			// A receipt advance's echo: message (if any), then messages.
			for _, m := range append([]*deliveryv1.Message{u.GetMessage()}, u.GetMessages()...) {
				if m != nil {
					parts = append(parts, &event{message: m})
				}
			}
			e.message, parts[0] = parts[0].message, e
		}
		if e.message == nil {
			return nil
		}
	case natsx.SubjectConversationCreated, natsx.SubjectConversationUpdated, natsx.SubjectConversationEcho:
		var ev interface {
			proto.Message
			GetMeta() *typev1.EventMeta
			GetConversation() *conversationv1.Conversation
		} = &conversationv1.ConversationUpdated{}
		if base == natsx.SubjectConversationCreated {
			ev = &conversationv1.ConversationCreated{}
		}
		if !decoded(natsx.StreamConversation, ev) {
			return nil
		}
		e.kind = itemConversation
		e.conversation, e.patient = ev.GetConversation().GetName(), ev.GetConversation().GetPatient()
		if u, ok := ev.(*conversationv1.ConversationUpdated); ok {
			e.updated = u
		}
	case natsx.SubjectConversationRead:
		ev := &conversationv1.ConversationRead{}
		if !decoded(natsx.StreamConversation, ev) {
			return nil
		}
		e.kind = itemConversationRead
		e.conversation, e.user, e.readTo = ev.GetConversation(), ev.GetReader(), ev.GetUpToSeq()
	case natsx.SubjectConversationUser:
		ev := &conversationv1.ConversationUserStateChanged{}
		if !decoded(natsx.StreamConversation, ev) {
			return nil
		}
		e.kind = itemUserState
		e.conversation, e.user = ev.GetConversation(), ev.GetUser()
	default:
		return nil
	}
	if e.kind != itemMessageCreated && e.kind != itemMessageUpdated && e.conversation == "" {
		return nil
	}
	e.practice, e.action = head.Practice, head.Action
	if e.kind == itemMessageCreated {
		e.wroteAt = head.Time
	}
	for i, p := range parts {
		// The parts of a stream message of several: the same event but for
		// the message, each its own (rendered and written on its own).
		if i > 0 {
			p.kind, p.stream, p.seq, p.practice, p.patient, p.action = e.kind, e.stream, e.seq, e.practice, e.patient, e.action
			parts[i-1].more = p
		}
		p.part = uint32(i + 1)
	}
	if len(parts) > 0 {
		parts[len(parts)-1].last = true
	}
	return e
}
