// Package domain holds the delivery service's model, rules and ports.
package domain

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"github.com/clinicchat/clinicchat/services/platform/eventtype"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// Status of a message, as the sender's side sees it. It never goes backwards.
type Status int

const (
	Sent      Status = 1
	Delivered Status = 2
	Read      Status = 3
)

// Limits (SPEC.md).
const (
	MaxTextRunes    = 10000
	MaxAttachments  = 10
	MaxRequestIDLen = 128
)

// AttachmentRef is an attachment as shown in a message. Filename is PHI.
type AttachmentRef struct {
	Name        string `json:"name"`
	Filename    string `json:"filename"`
	ContentType string `json:"contentType"`
	SizeBytes   int64  `json:"sizeBytes"`
}

// Artifact is an appointment, invoice or prescription card. PHI.
type Artifact struct {
	Type     int    `json:"type"`
	Ref      string `json:"ref"`
	Title    string `json:"title,omitempty"`
	Subtitle string `json:"subtitle,omitempty"`
	Date     string `json:"date,omitempty"`
	Amount   string `json:"amount,omitempty"`
}

// Extras is the stored non-text content of a message.
type Extras struct {
	Attachments []AttachmentRef `json:"attachments,omitempty"`
	Artifact    *Artifact       `json:"artifact,omitempty"`
}

// Message is one message of a conversation.
type Message struct {
	Practice       string
	ConversationID string
	Seq            int64
	PatientID      string
	Sender         string // "users/u" or "patients/p"
	SenderRole     string
	// SenderDisplayName is who wrote, as a person reads it: a staff member's
	// token name claim, or the patient's directory display name (PHI).
	SenderDisplayName string
	FromPatient       bool
	Text              string // PHI
	Extras            Extras
	Sensitive         bool
	Status            Status
	CreateTime        time.Time
	DeliverTime       time.Time
	ReadTime          time.Time
	ReadBy            string
	RequestID         string
	ContentHash       string
}

// Name is the resource name.
func (m Message) Name() string {
	// Written into one buffer: the concatenation of FormatInt's string was
	// two allocations (a seq from 100 on has a string of its own).
	var buf [176]byte // an id is at most 128 bytes (ids.Valid)
	b := append(buf[:0], "conversations/"...)
	b = append(b, m.ConversationID...)
	b = append(b, "/messages/"...)
	return string(strconv.AppendInt(b, m.Seq, 10))
}

// Conversation is the name of the message's thread.
func (m Message) Conversation() string { return "conversations/" + m.ConversationID }

// ContentHash identifies what a send asked for, to tell a retry from a reuse
// of its request id for other content.
// It is the SHA-256 of json.Marshal([]any{conversationID, text, sensitive,
// attachments, artifactType, artifactRef}) (stored with every message: a
// retry after an upgrade must hash the same), written by hand when every
// string is one json.Marshal copies as it is (contentJSON), which spares
// its reflection (~0.6 % of the all-in-one's CPU at 8 senders).
func ContentHash(conversationID, text string, sensitive bool, attachments []string, artifactType int, artifactRef string) string {
	var buf [512]byte
	b, ok := contentJSON(buf[:0], conversationID, text, sensitive, attachments, artifactType, artifactRef)
	if !ok {
		b, _ = json.Marshal([]any{conversationID, text, sensitive, attachments, artifactType, artifactRef})
	}
	sum := sha256.Sum256(b)
	var h [2 * sha256.Size]byte
	hex.Encode(h[:], sum[:])
	return string(h[:])
}

// contentJSON appends what json.Marshal writes for ContentHash's array, or
// reports false if a string needs one of its escapes.
func contentJSON(b []byte, conversationID, text string, sensitive bool, attachments []string, artifactType int, artifactRef string) ([]byte, bool) {
	ok := true
	str := func(s string) {
		ok = ok && plainJSON(s)
		b = append(append(append(b, '"'), s...), '"')
	}
	b = append(b, '[')
	str(conversationID)
	b = append(b, ',')
	str(text)
	b = strconv.AppendBool(append(b, ','), sensitive)
	b = append(b, ',')
	if attachments == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, a := range attachments {
			if i > 0 {
				b = append(b, ',')
			}
			str(a)
		}
		b = append(b, ']')
	}
	b = strconv.AppendInt(append(b, ','), int64(artifactType), 10)
	b = append(b, ',')
	str(artifactRef)
	return append(b, ']'), ok
}

// plainJSON reports whether json.Marshal writes s as it is between quotes:
// valid UTF-8 without control characters, '"', '\\', the HTML characters
// it escapes ('<', '>', '&') or U+2028/U+2029.
func plainJSON(s string) bool {
	ascii := true
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return ascii || utf8.ValidString(s) && !strings.Contains(s, "\u2028") && !strings.Contains(s, "\u2029")
}

// NormalizeText returns "" for text that is only white space (Unicode
// spaces, line breaks, and the invisible zero-width characters and BOM), so
// such text counts as empty; other text is returned unchanged.
func NormalizeText(text string) string {
	if strings.TrimFunc(text, func(r rune) bool {
		return unicode.IsSpace(r) || r == '\u200B' || r == '\u200C' || r == '\u200D' || r == '\u2060' || r == '\uFEFF'
	}) == "" {
		return ""
	}
	return text
}

// ValidateSend checks a send's shape (SPEC.md message rules).
func ValidateSend(text string, attachments int, hasArtifact bool, requestID string) error {
	switch {
	case requestID == "":
		return errs.InvalidArgument("requestId is required, so a retried send is never stored twice")
	case len(requestID) > MaxRequestIDLen:
		return errs.InvalidArgument("requestId may be at most %d characters", MaxRequestIDLen)
	case !utf8.ValidString(text):
		return errs.InvalidArgument("Message text is not valid UTF-8")
	case utf8.RuneCountInString(text) > MaxTextRunes:
		return errs.InvalidArgument("Message text may be at most %d characters", MaxTextRunes)
	case attachments > MaxAttachments:
		return errs.InvalidArgument("A message may have at most %d attachments", MaxAttachments)
	case text == "" && attachments == 0 && !hasArtifact:
		return errs.InvalidArgument("Type a message, or attach a file or a record")
	}
	return nil
}

// Event is an outbox entry written in the same transaction as a change.
type Event = eventtype.Event

// Repository stores messages; every method is scoped by practice.
type Repository interface {
	// FindByRequest returns the sender's message with requestID, or ErrNotFound.
	FindByRequest(ctx context.Context, practice, sender, requestID string) (Message, error)
	// Send stores m with the conversation's next sequence number unless the
	// sender already sent requestID: then it returns that message and
	// created=false (or ErrRequestIDReused if its content differs).
	Send(ctx context.Context, m Message, evs func(Message) []Event) (Message, bool, error)
	// Get returns one message or ErrNotFound.
	Get(ctx context.Context, practice, conversationID string, seq int64) (Message, error)
	// List returns up to limit messages with seq < before (0: from the newest), newest first.
	List(ctx context.Context, practice, conversationID string, before int64, limit int) ([]Message, error)
	// Advance raises messages of the other side of reader up to upTo to status
	// (Delivered or Read), never lowering one; returns the messages it changed.
	Advance(ctx context.Context, a Advance, evs func([]Message) []Event) ([]Message, error)
	// AdvanceAll is Advance for each of as, in order, in one transaction.
	AdvanceAll(ctx context.Context, as []Advance, evs func(Advance, []Message) []Event) error
	// MarkDelivered is AdvanceAll for receipts whose caller can wait: the
	// transaction may wait up to delay to share another write's commit.
	MarkDelivered(ctx context.Context, delay time.Duration, as []Advance, evs func(Advance, []Message) []Event) error
	// Record writes events that go with no change.
	Record(ctx context.Context, evs ...Event) error
}

// Advance is a receipt watermark move.
type Advance struct {
	Practice        string
	ConversationID  string
	ReaderIsPatient bool // the reader's side; messages of the other side move
	Reader          string
	UpTo            int64
	To              Status
	At              time.Time
}

// Errors.
var (
	ErrNotFound         = errs.NotFound("Message not found")
	ErrRequestIDReused  = errs.InvalidArgument("This requestId was already used for a different message; use a new requestId").WithReason(errs.ReasonRequestIDReused)
	ErrOptedOut         = errs.FailedPrecondition(errs.ReasonChatOptedOut, "Patient has opted out of chat; offer SMS instead")
	ErrSelfOptedOut     = errs.FailedPrecondition(errs.ReasonChatOptedOut, "You have turned chat off; turn it on in your communication preferences to send messages")
	ErrNoPortal         = errs.FailedPrecondition(errs.ReasonNoPortalAccount, "This patient has no patient portal account, so chat is not possible; offer SMS instead")
	ErrBadParent        = errs.InvalidArgument("parent must look like conversations/{conversation}")
	ErrBadName          = errs.InvalidArgument("Message name must look like conversations/{c}/messages/{m}")
	ErrStaffOnly        = errs.PermissionDenied("Only practice staff can do this")
	ErrNotRecipient     = errs.PermissionDenied("Only a recipient can acknowledge delivery")
	ErrAttachmentOther  = errs.InvalidArgument("An attachment belongs to another conversation; upload it to this one")
	ErrNoArtifactSource = errs.FailedPrecondition("NO_ARTIFACT_PROVIDER", "No practice system is connected to look up appointments, invoices and prescriptions")
	ErrBadArtifact      = errs.InvalidArgument("artifact needs a type (APPOINTMENT, INVOICE or PRESCRIPTION) and a ref")
)
