package domain

// This file is the one place that says which published events are audit
// actions. The rule: every event on every clinicchat stream is an action and
// becomes exactly one audit record, except
//
//   - events on the subjects in NonActionSubjects, which are requests to do
//     something rather than something done; and
//   - events whose actor is the product itself (meta.actor == "system") and
//     whose action is in SystemEchoActions: receipts and state echoes that
//     follow from a person's action that is already in the log.
//
// Anything with a person (or another practice system) as actor is logged,
// whatever its action, and so is every other action of the product itself
// (the archive sweeper's "conversation.archive", for one). A publisher that
// adds a new event is audited by default; only adding it here removes it.
//
// The system echoes are published on kinds of their own (SystemEchoSubjects)
// so that JetStream leaves them out of the audit consumers' filters; events
// of the same actions published before those kinds existed are on the
// audited kinds and skipped here by actor and action.

// SystemActor is meta.actor for actions of the product itself.
const SystemActor = "system"

// NonActionSubjects are the kinds of event (natsx.Kind: the NATS subject
// without prefix and tenant tokens) that are not audited at all, with the
// reason. The audit service's consumers do not even receive the events of
// these subjects (their JetStream filters leave them out).
var NonActionSubjects = map[string]string{
	// A request to an external notifier to tell a recipient about a new
	// message; the send that caused it is logged as "message.send".
	"conversation.notification.requested": "notification request, not an action",
}

// SystemEchoSubjects are the kinds of event that carry only the product's
// own echoes (natsx.Echoes), each with the one action it carries: the
// publishers choose the subject by actor and action (natsx.PublishBase), so
// an event on one of these has SystemActor as actor and its action is in
// SystemEchoActions; a person's update of the same kind goes on the audited
// kind it echoes. The audit service's consumers do not receive these kinds.
// Should an event with another actor or action reach the audit on one of
// them, Audited still logs it (the rules below do not look at the kind).
var SystemEchoSubjects = map[string]string{
	"delivery.message.status":            "message.status",
	"conversation.conversation.activity": "conversation.activity",
}

// Skipped reports whether the audit service's consumers leave kind out of
// their JetStream filters (NonActionSubjects, SystemEchoSubjects). Every
// other kind is delivered to them and judged by Audited.
func Skipped(kind string) bool {
	_, non := NonActionSubjects[kind]
	_, echo := SystemEchoSubjects[kind]
	return non || echo
}

// SystemEchoActions are actions that are not audited when the actor is
// SystemActor, with the reason. Keep this list small and explicit.
var SystemEchoActions = map[string]string{
	// The delivery service moving a message's receipt status (SENT →
	// DELIVERED → READ) after a recipient fetched it, received it on a live
	// stream or marked the thread read; the person's read is logged as
	// "conversation.read" (markRead) and fetches as views.
	"message.status": "receipt status echo",
	// The conversation service updating a thread's last-message time,
	// preview and unread counts after a message; the send is logged as
	// "message.send".
	"conversation.activity": "thread activity echo",
}

// Audited reports whether an event of kind (its NATS subject without the
// prefix and the tenant tokens, e.g. "delivery.message.created") with entry's
// metadata becomes an audit record, and when not, why (a fixed phrase, no PHI).
func Audited(kind string, e Entry) (bool, string) {
	if why, ok := NonActionSubjects[kind]; ok {
		return false, why
	}
	if e.Actor == SystemActor {
		if why, ok := SystemEchoActions[e.Action]; ok {
			return false, why
		}
	}
	return true, ""
}
