// Package domain holds the attachment service's model, rules and ports: what
// an attachment is, which files are accepted (sniffed from the bytes), how a
// file name is cleaned, and the repository the store implements.
package domain

import (
	"context"
	"github.com/clinicchat/clinicchat/services/platform/eventtype"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// MaxBytes is the largest attachment accepted (SPEC.md: 25 MiB). One byte
// more fails ATTACHMENT_TOO_LARGE.
const MaxBytes int64 = 26_214_400

// Attachment is an uploaded file's metadata. Filename is PHI; the bytes live
// in the blob store under ID.
type Attachment struct {
	Practice       string
	ID             string
	ConversationID string
	Uploader       string // "users/u" or "patients/p"
	UploaderRole   string
	Filename       string // PHI
	ContentType    string // sniffed from the bytes
	SizeBytes      int64
	SHA256         string // lower-case hex
	CreateTime     time.Time
}

// Name is the resource name "attachments/{id}".
func (a Attachment) Name() string { return "attachments/" + a.ID }

// Conversation is the name of the attachment's thread.
func (a Attachment) Conversation() string { return "conversations/" + a.ConversationID }

// Link records that a message carries an attachment (learned from delivery's
// MessageCreated events). An attachment on a sensitive message needs a
// recent sign-in for the patient to download it.
type Link struct {
	Practice     string
	AttachmentID string
	Message      string // "conversations/{c}/messages/{m}"
	Sender       string // the message's sender, "users/u" or "patients/p"
	Sensitive    bool
	CreateTime   time.Time
}

// Event is an outbox entry written in the same transaction as a change.
type Event = eventtype.Event

// Repository stores attachment metadata and message links; every method is
// scoped by practice. Blobs are not its business.
type Repository interface {
	// Create stores a and its events in one transaction.
	Create(ctx context.Context, a Attachment, evs ...Event) error
	// Get returns one attachment or ErrNotFound.
	Get(ctx context.Context, practice, id string) (Attachment, error)
	// Links returns the messages that carry the attachment, oldest first.
	Links(ctx context.Context, practice, attachmentID string) ([]Link, error)
	// AddLinks records links; a link already recorded is left as it is.
	AddLinks(ctx context.Context, links ...Link) error
	// Record writes events that go with no change (accesses, refusals).
	Record(ctx context.Context, evs ...Event) error
	// PendingBytes is the total size of uploader's attachments that no
	// message carries.
	PendingBytes(ctx context.Context, practice, uploader string) (int64, error)
	// Unattached returns up to limit attachments created before before
	// that no message carries, oldest first (practice, id and uploader set).
	Unattached(ctx context.Context, before time.Time, limit int) ([]Attachment, error)
	// DeleteUnattached removes an attachment's row if still no message
	// carries it, and reports whether it did.
	DeleteUnattached(ctx context.Context, practice, id string) (bool, error)
}

// Errors. Messages are for the person at the screen and never carry PHI.
var (
	ErrNotFound       = errs.NotFound("Attachment not found")
	ErrBadName        = errs.InvalidArgument("Attachment name must look like attachments/{attachment}")
	ErrBadParent      = errs.InvalidArgument("conversation must look like conversations/{conversation}")
	ErrNoHeader       = errs.InvalidArgument("The first frame of an upload must be its header (conversation and file name)")
	ErrExtraHeader    = errs.InvalidArgument("Only the first frame of an upload may carry a header")
	ErrNoFilename     = errs.InvalidArgument("A file name is required")
	ErrBadFilename    = errs.InvalidArgument("The file name is not valid; rename the file and try again")
	ErrEmptyFile      = errs.InvalidArgument("The file is empty; choose another file")
	ErrTooLarge       = &errs.Error{Code: codes.InvalidArgument, Reason: errs.ReasonAttachmentTooLarge, Msg: "Files can be at most 25 MB; compress the file and try again"}
	ErrUnsupported    = &errs.Error{Code: codes.InvalidArgument, Reason: errs.ReasonUnsupportedType, Msg: "Only images, PDFs and documents can be attached"}
	ErrStepUpRequired = errs.FailedPrecondition(errs.ReasonStepUpRequired, "Sign in again to view this sensitive attachment")
)
