// Package domain holds the conversation service's model, rules and ports.
package domain

import (
	"context"
	"strings"
	"time"

	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/eventtype"
)

// State of a thread.
type State int

const (
	Active   State = 1
	Archived State = 2
)

// Conversation is one thread between a practice and one patient. The per-user
// fields are those of the viewer the conversation was loaded for.
type Conversation struct {
	Practice           string
	ID                 string
	PatientID          string
	PatientDisplayName string // PHI
	State              State
	CreateTime         time.Time
	LastMessageTime    time.Time
	LastMessageSeq     int64
	LastMessagePreview string // PHI
	// AwaitingReplySince is the time of the patient's oldest message that no
	// staff message has followed; zero when staff had the last word.
	AwaitingReplySince time.Time
	// Assignee is "users/{u}" or "" (unassigned); AssigneeDisplayName their
	// name as the practice last saw it.
	Assignee            string
	AssigneeDisplayName string

	// Viewer's own state.
	Pinned      bool
	Muted       bool
	ReadSeq     int64
	UnreadCount int
}

// Name is the resource name.
func (c Conversation) Name() string { return "conversations/" + c.ID }

// Patient is the patient's resource name.
func (c Conversation) Patient() string { return "patients/" + c.PatientID }

// Viewer says whose per-user state to load.
type Viewer struct {
	Principal string // "users/u" or "patients/p"
	IsPatient bool
}

// Cursor is a keyset position in a list. Awaiting marks a position in the
// needs-reply order (LastActivity then holds awaiting_reply_since).
type Cursor struct {
	Pinned       bool
	LastActivity int64
	ID           string
	Awaiting     bool `json:",omitempty"`
}

// ListQuery selects threads.
type ListQuery struct {
	Practice  string
	PatientID string // set for a patient's own list
	Viewer    Viewer
	Words     []string // folded name prefixes
	Archived  bool
	IDs       []string // only these threads, in any state
	// AwaitingReply lists only threads awaiting a reply, longest-waiting first.
	AwaitingReply bool
	Assignee      string // only threads assigned to "users/{u}"
	Limit         int
	After         *Cursor
}

// Event is an outbox entry written in the same transaction as a change.
type Event = eventtype.Event

// MessageApplied is the projection of one delivered message.
type MessageApplied struct {
	Practice       string
	ConversationID string
	Seq            int64
	FromPatient    bool
	Sender         string // "users/u" or "patients/p"
	Time           time.Time
	Preview        string
	// Traceparent is the trace (W3C traceparent) the message's events
	// continue; empty: the caller's context's.
	Traceparent string
}

// Outcome is what projecting one message did.
type Outcome int

const (
	// Applied: the message is in the thread now, and its events are written.
	Applied Outcome = iota + 1
	// Replayed: the message was projected before; nothing is written.
	Replayed
	// NoThread: the message's thread does not exist; nothing is written.
	NoThread
)

// StaffMember is a staff user the practice has seen.
type StaffMember struct {
	Practice    string
	User        string // "users/{u}"
	DisplayName string // the token's name claim; may be empty
	Role        string
	UpdateTime  time.Time
}

// ShownName is the display name, or the user id when there is none.
func (m StaffMember) ShownName() string {
	if m.DisplayName != "" {
		return m.DisplayName
	}
	return strings.TrimPrefix(m.User, "users/")
}

// UserFlags is a pin or mute change; nil leaves a flag as it is.
type UserFlags struct {
	Pinned *bool
	Muted  *bool
}

// Repository stores threads. Every method is scoped by practice. Methods that
// change data take the events to publish and write them in the same
// transaction; an event builder is called with the stored state.
type Repository interface {
	// Create inserts c unless the patient has a thread; returns the thread and
	// whether it was created. onCreate is written only when created.
	Create(ctx context.Context, c Conversation, onCreate func(Conversation) []Event) (Conversation, bool, error)
	// Get loads a thread with v's per-user state. ErrNotFound when absent.
	Get(ctx context.Context, practice, id string, v Viewer) (Conversation, error)
	// GetShared loads a thread without per-user state (cheaper: no unread count).
	GetShared(ctx context.Context, practice, id string) (Conversation, error)
	// List returns up to q.Limit threads and the cursor after the last, if more.
	List(ctx context.Context, q ListQuery) ([]Conversation, *Cursor, error)
	// SetFlags changes v's pin/mute and writes the events.
	SetFlags(ctx context.Context, practice, id string, v Viewer, f UserFlags, evs func(Conversation) []Event) (Conversation, error)
	// MarkRead raises v's read watermark to upTo (never lowers it; upTo <= 0:
	// the newest known message), capped at the newest known message. check
	// runs in the write's transaction, with the thread without per-user
	// state, before anything is written; its error is returned and nothing
	// is written. ErrNotFound when the thread is absent. advanced reports
	// whether the watermark moved.
	MarkRead(ctx context.Context, practice, id string, v Viewer, upTo int64, check func(c Conversation) error, evs func(c Conversation, advanced bool) []Event) (Conversation, error)
	// ApplyMessages projects messages in one transaction, idempotent by
	// (conversation, seq): out[i] is ms[i]'s outcome; an error fails them all
	// (nothing is written). A thread's messages are applied in sequence order,
	// and evs is called once for each message applied, in that order, with the
	// thread as of that message and the users to notify; its events are
	// written in that order.
	ApplyMessages(ctx context.Context, ms []MessageApplied, evs func(m MessageApplied, c Conversation, recipients []string) []Event) (out []Outcome, err error)
	// RenamePatient updates the display name on the patient's thread.
	RenamePatient(ctx context.Context, practice, patientID, displayName string) error
	// ArchiveIdle archives up to limit active threads idle since before.
	ArchiveIdle(ctx context.Context, before time.Time, limit int, evs func(Conversation) []Event) (int, error)
	// Record writes events that go with no change (accesses, refusals).
	Record(ctx context.Context, evs ...Event) error
	// Assign sets the thread's assignee ("users/{u}" or "" to clear) and
	// writes the events; ErrUnknownStaff (wrapped) when the practice has not
	// seen that user.
	Assign(ctx context.Context, practice, id, assignee string, v Viewer, evs func(Conversation) []Event) (Conversation, error)
	// SaveStaff records a staff user as seen (insert, or update the name and role).
	SaveStaff(ctx context.Context, m StaffMember) error
	// ListStaff lists the practice's staff by display name, then user id,
	// after (displayName, user) when set; up to limit, and whether there are more.
	ListStaff(ctx context.Context, practice string, after *StaffCursor, limit int) ([]StaffMember, bool, error)
	TemplateRepository
}

// StaffCursor is a keyset position in the staff list.
type StaffCursor struct {
	DisplayName string
	User        string
}

// Errors.
var (
	ErrNotFound = errs.NotFound("Conversation not found")
	ErrNoPortal = errs.FailedPrecondition(errs.ReasonNoPortalAccount,
		"This patient has no patient portal account, so chat is not possible; offer SMS instead")
	ErrStaffOnly   = errs.PermissionDenied("Only practice staff can do this")
	ErrBadName     = errs.InvalidArgument("Conversation name must look like conversations/{conversation}")
	ErrBadPatient  = errs.InvalidArgument("Patient must look like patients/{patient}")
	ErrBadUpTo     = errs.InvalidArgument("upTo must be a message of this conversation, conversations/{c}/messages/{m}")
	ErrUpToAhead   = errs.InvalidArgument("upTo is more than 1000 messages past the last message of this conversation: no such message can exist yet")
	ErrPatientGone = errs.NotFound("Patient not found")
	ErrBadAssignee = errs.InvalidArgument("assignee must look like users/{u}, or be empty to unassign")
)

// UnknownStaff is the error for assigning someone the practice has never seen.
func UnknownStaff(user string) error {
	return errs.InvalidArgument("%s has not signed in to this practice yet; only staff who have used chat can be assigned", user)
}

// Participant reports whether someone of role in practice, with subject sub, may act in c.
func Participant(c Conversation, practice, sub string, staffOrSystem, patient bool) bool {
	if c.Practice != practice {
		return false
	}
	return staffOrSystem || (patient && c.PatientID == sub)
}
