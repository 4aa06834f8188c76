// Package app holds the attachment service's use cases and their
// authorization: streaming uploads (size limit, type sniffing, durable
// commit), metadata reads, verified downloads with the sensitive-message
// step-up rule, and the consumer that learns which messages carry which
// attachments.
package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/attachment/internal/domain"
	"github.com/clinicchat/clinicchat/services/attachment/internal/imagemeta"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/events"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/ratelimit"
)

// Audited actions.
const (
	ActionUpload   = "attachment.upload"
	ActionView     = "attachment.view"
	ActionDownload = "attachment.download"
)

// DefaultLinkWait is how long a patient's access to an attachment that no
// message is known to carry yet waits for the message to arrive (see
// App.LinkWait).
const DefaultLinkWait = 3 * time.Second

// DefaultPendingQuota is the bytes of uploads no message carries yet that
// one identity may hold: 200 MiB, eight files of the largest size.
const DefaultPendingQuota int64 = 200 << 20

// LimitPendingUploads names the quota in errors and metrics.
const LimitPendingUploads = "pending_uploads"

// linkPoll is how often a waiting access looks for links recorded by
// another replica's consumer (this replica's wake it at once).
const linkPoll = 100 * time.Millisecond

// keyAttachment is the log field of an attachment id.
const keyAttachment = "attachment"

// ConversationRef is what the service needs of a thread.
type ConversationRef struct {
	ID        string
	PatientID string
}

// Conversations authorizes the caller for a thread (port to the
// conversation service's ResolveConversation, called as the caller). A
// caller who is no participant gets an error with code NOT_FOUND.
type Conversations interface {
	Resolve(ctx context.Context, conversationID string) (ConversationRef, error)
}

// TempBlob is a blob being written: it is kept only by Commit.
type TempBlob interface {
	io.Writer
	io.ReaderAt
	// Commit makes the bytes durable and stores them as blob id; on error
	// nothing is kept.
	Commit(id string) error
	// Abort discards the bytes; harmless after Commit.
	Abort()
}

// Blobs stores attachment bytes (port to the blob directory).
type Blobs interface {
	Create() (TempBlob, error)
	// Open returns the bytes of blob id and their size.
	Open(id string) (io.ReadCloser, int64, error)
	Remove(id string) error
}

// App is the attachment application layer.
type App struct {
	repo          domain.Repository
	conversations Conversations
	blobs         Blobs
	log           *zap.Logger
	now           func() time.Time
	linked        broadcast

	// StepUpWindow is how recently a patient must have signed in to open an
	// attachment of a sensitive message.
	StepUpWindow time.Duration
	// PendingQuota bounds the bytes of an identity's uploads that no
	// message carries yet (DefaultPendingQuota when 0).
	PendingQuota int64
	// Limits counts quota refusals (may be nil).
	Limits *ratelimit.Metrics
	// LinkWait bounds how long a patient who has not signed in recently
	// waits, when opening an attachment someone else uploaded that no
	// message is known to carry yet, for the message's event (it is usually
	// there in milliseconds). If none arrives the attachment is treated as
	// sensitive: an attachment is never shown unlocked because its message
	// is late.
	LinkWait time.Duration
}

// New returns the application layer.
func New(repo domain.Repository, c Conversations, b Blobs, log *zap.Logger, stepUpWindow time.Duration) *App {
	return &App{repo: repo, conversations: c, blobs: b, log: log, now: time.Now,
		StepUpWindow: stepUpWindow, LinkWait: DefaultLinkWait}
}

func caller(ctx context.Context) (auth.Identity, error) {
	id, ok := auth.FromContext(ctx)
	if !ok {
		return id, errs.Unauthenticated("Sign in again: no verified caller")
	}
	return id, nil
}

func access(meta *typev1.EventMeta) domain.Event {
	return domain.Event{ID: meta.GetId(), Subject: natsx.Tenant(natsx.SubjectAttachmentAccess, meta.GetPractice()), Msg: &typev1.AccessRecorded{Meta: meta}}
}

// refuse records a refused attempt and returns err. The record is written
// even when the caller has gone away; if it cannot be written the refusal
// still stands (nothing was disclosed) and the failure is logged.
func (a *App) refuse(ctx context.Context, who auth.Identity, action, resource string, err error) error {
	var e *errs.Error
	if !errors.As(err, &e) {
		return err
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if rerr := a.repo.Record(rctx, access(events.Denied(who, action, resource, e.Reason, a.now()))); rerr != nil {
		a.log.Warn("could not record a refused attempt", zap.String(logkeys.Practice, who.Practice),
			zap.String(logkeys.Actor, who.Principal()), zap.String("action", action), zap.Error(rerr))
	}
	return err
}

// resolve authorizes who for the thread conversationID. A caller who is no
// participant gets notFound (recorded as a refused action on resource);
// other failures (the conversation service is down) pass through.
func (a *App) resolve(ctx context.Context, who auth.Identity, conversationID, action, resource string, notFound error) (ConversationRef, error) {
	ref, err := a.conversations.Resolve(ctx, conversationID)
	if err == nil {
		return ref, nil
	}
	var e *errs.Error
	if errors.As(err, &e) && (e.Code == codes.NotFound || e.Code == codes.PermissionDenied) {
		return ref, a.refuse(ctx, who, action, resource, notFound)
	}
	return ref, err
}

// UploadHeader is the first frame of an upload.
type UploadHeader struct {
	Conversation        string // "conversations/{c}"
	Filename            string // PHI
	DeclaredContentType string
}

// Chunks yields an upload's bytes; Next returns io.EOF at the clean end of
// the upload and any other error when it was cut off.
type Chunks interface {
	Next() ([]byte, error)
}

// Upload stores a file for the caller, a participant of the conversation.
// The bytes go to a temporary blob while they are hashed, counted and
// sniffed, and are never held whole in memory; the first byte over
// domain.MaxBytes, or first bytes of a refused type, end the upload at once.
// Only a complete, accepted file is fsynced and renamed into place, and its
// metadata row and AttachmentUploaded event then commit together; on any
// failure nothing is kept.
func (a *App) Upload(ctx context.Context, h UploadHeader, src Chunks) (domain.Attachment, error) {
	who, err := caller(ctx)
	if err != nil {
		return domain.Attachment{}, err
	}
	p, ok := ids.Parse(h.Conversation, "conversations")
	if !ok {
		return domain.Attachment{}, domain.ErrBadParent
	}
	filename, err := domain.SanitizeFilename(h.Filename)
	if err != nil {
		return domain.Attachment{}, err
	}
	conv, err := a.resolve(ctx, who, p[0], ActionUpload, h.Conversation, errs.NotFound("Conversation not found"))
	if err != nil {
		return domain.Attachment{}, err
	}
	refuse := func(err error) (domain.Attachment, error) {
		return domain.Attachment{}, a.refuse(ctx, who, ActionUpload, h.Conversation, err)
	}
	quota := a.PendingQuota
	if quota <= 0 {
		quota = DefaultPendingQuota
	}
	pending, err := a.repo.PendingBytes(ctx, who.Practice, who.Principal())
	if err != nil {
		return domain.Attachment{}, err
	}
	if pending >= quota {
		return refuse(a.overQuota(quota))
	}

	tmp, err := a.blobs.Create()
	if err != nil {
		return domain.Attachment{}, err
	}
	defer tmp.Abort() // nothing is left behind unless committed
	sum := sha256.New()
	sniff := domain.NewSniffer()
	// The sniffer sees the bytes as they came; what is stored, hashed and
	// served is the file less its image metadata (imagemeta).
	clean := imagemeta.NewStripper(io.MultiWriter(tmp, sum))
	w := io.MultiWriter(clean, sniff)
	var size int64
	checked := false
	for {
		chunk, err := src.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return domain.Attachment{}, err
		}
		if size+int64(len(chunk)) > domain.MaxBytes {
			return refuse(domain.ErrTooLarge)
		}
		if _, err := w.Write(chunk); err != nil {
			if errors.Is(err, imagemeta.ErrMalformed) {
				return refuse(domain.ErrUnsupported)
			}
			return domain.Attachment{}, fmt.Errorf("write upload: %w", err)
		}
		size += int64(len(chunk))
		if !checked && sniff.Ready() {
			checked = true
			if err := sniff.Check(filename, h.DeclaredContentType); err != nil {
				return refuse(err)
			}
		}
	}
	if err := clean.Close(); err != nil {
		if errors.Is(err, imagemeta.ErrMalformed) {
			return refuse(domain.ErrUnsupported)
		}
		return domain.Attachment{}, fmt.Errorf("write upload: %w", err)
	}
	ft, err := sniff.Finish(tmp, filename, h.DeclaredContentType)
	if err != nil {
		return refuse(err)
	}
	// Again with this file's size, and what finished meanwhile.
	if pending, err = a.repo.PendingBytes(ctx, who.Practice, who.Principal()); err != nil {
		return domain.Attachment{}, err
	}
	if pending+size > quota {
		return refuse(a.overQuota(quota))
	}
	now := a.now().UTC().Truncate(time.Microsecond) // as stored
	att := domain.Attachment{
		Practice: who.Practice, ID: ids.New(), ConversationID: conv.ID,
		Uploader: who.Principal(), UploaderRole: who.Role,
		Filename: domain.WithExtension(filename, ft), ContentType: ft.ContentType,
		SizeBytes: clean.Written(), SHA256: hex.EncodeToString(sum.Sum(nil)), CreateTime: now,
	}
	if err := tmp.Commit(att.ID); err != nil {
		return domain.Attachment{}, err
	}
	meta := events.Meta(who, ActionUpload, att.Name(), now)
	meta.Detail = att.Conversation()
	ev := domain.Event{ID: meta.GetId(), Subject: natsx.Tenant(natsx.SubjectAttachmentUploaded, meta.GetPractice()),
		Msg: &attachmentv1.AttachmentUploaded{Meta: meta, Attachment: ToProto(att)}}
	if err := a.repo.Create(ctx, att, ev); err != nil {
		if rerr := a.blobs.Remove(att.ID); rerr != nil {
			a.log.Error("could not remove the blob of a failed upload", zap.String(keyAttachment, att.ID), zap.Error(rerr))
		}
		return domain.Attachment{}, err
	}
	a.log.Info("attachment stored", zap.String(keyAttachment, att.ID), zap.String(logkeys.Conversation, att.ConversationID),
		zap.String(logkeys.Practice, att.Practice), zap.String(logkeys.Actor, att.Uploader), zap.Int64("size_bytes", att.SizeBytes))
	return att, nil
}

// overQuota is the refusal of an upload past PendingQuota (counted).
func (a *App) overQuota(quota int64) error {
	a.Limits.Refused(LimitPendingUploads)
	return errs.ResourceExhausted(LimitPendingUploads, time.Hour,
		"You have %d MiB of uploaded files not yet sent in a message; send them, or wait a day for unsent ones to be removed",
		quota>>20)
}

// SweepBatch is how many never-attached uploads one sweep query handles.
const SweepBatch = 500

// SweepUnattached removes uploads older than ttl that no message carries:
// the row first (only if still no message carries it), then the bytes. It
// returns how many it removed. Each batch is of the oldest; the sweep ends
// when a batch is short, so it is bounded by the uploads there are.
func (a *App) SweepUnattached(ctx context.Context, ttl time.Duration) (int, error) {
	before := a.now().Add(-ttl)
	removed := 0
	for {
		batch, err := a.repo.Unattached(ctx, before, SweepBatch)
		if err != nil {
			return removed, err
		}
		kept := 0
		for _, att := range batch {
			ok, err := a.repo.DeleteUnattached(ctx, att.Practice, att.ID)
			if err != nil {
				return removed, err
			}
			if !ok {
				kept++ // a message carries it now
				continue
			}
			if err := a.blobs.Remove(att.ID); err != nil {
				a.log.Error("could not remove the bytes of a never-attached upload", zap.String(keyAttachment, att.ID), zap.Error(err))
			}
			removed++
		}
		if len(batch) < SweepBatch || kept == len(batch) {
			return removed, nil
		}
	}
}

// authorize loads attachment name for the caller: a participant of its
// conversation, and for a patient the step-up rule. Refusals are recorded
// as action and answer NOT_FOUND (or STEP_UP_REQUIRED).
func (a *App) authorize(ctx context.Context, name, action string) (auth.Identity, domain.Attachment, error) {
	who, err := caller(ctx)
	if err != nil {
		return who, domain.Attachment{}, err
	}
	p, ok := ids.Parse(name, "attachments")
	if !ok {
		return who, domain.Attachment{}, domain.ErrBadName
	}
	att, err := a.repo.Get(ctx, who.Practice, p[0])
	if errors.Is(err, domain.ErrNotFound) {
		return who, att, a.refuse(ctx, who, action, name, domain.ErrNotFound)
	}
	if err != nil {
		return who, att, err
	}
	if _, err := a.resolve(ctx, who, att.ConversationID, action, name, domain.ErrNotFound); err != nil {
		return who, att, err
	}
	locked, err := a.locked(ctx, who, att)
	if err != nil {
		return who, att, err
	}
	if locked {
		return who, att, a.refuse(ctx, who, action, name, domain.ErrStepUpRequired)
	}
	return who, att, nil
}

// locked reports whether who may not open att yet: a patient who has not
// signed in within StepUpWindow, and att is on a sensitive message someone
// else sent (as for the message itself, a patient's own messages and uploads
// are never locked to them) — or on no message known yet (see LinkWait).
func (a *App) locked(ctx context.Context, who auth.Identity, att domain.Attachment) (bool, error) {
	if !who.IsPatient() || who.SteppedUp(a.now(), a.StepUpWindow) || att.Uploader == who.Principal() {
		return false, nil
	}
	links, err := a.waitLinks(ctx, att)
	if err != nil {
		return false, err
	}
	if len(links) == 0 {
		return true, nil
	}
	for _, l := range links {
		if l.Sensitive && l.Sender != who.Principal() {
			return true, nil
		}
	}
	return false, nil
}

// waitLinks returns att's links, waiting up to LinkWait for the first.
func (a *App) waitLinks(ctx context.Context, att domain.Attachment) ([]domain.Link, error) {
	deadline := time.NewTimer(a.LinkWait)
	defer deadline.Stop()
	poll := time.NewTicker(linkPoll)
	defer poll.Stop()
	for {
		wake := a.linked.wait() // before the read, so no recording is missed
		links, err := a.repo.Links(ctx, att.Practice, att.ID)
		if err != nil || len(links) > 0 || a.LinkWait <= 0 {
			return links, err
		}
		select {
		case <-wake:
		case <-poll.C:
		case <-deadline.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Get returns an attachment's metadata to a participant and records the view.
func (a *App) Get(ctx context.Context, name string) (domain.Attachment, error) {
	who, att, err := a.authorize(ctx, name, ActionView)
	if err != nil {
		return att, err
	}
	meta := events.Meta(who, ActionView, att.Name(), a.now())
	meta.Detail = att.Conversation()
	if err := a.repo.Record(ctx, access(meta)); err != nil {
		return domain.Attachment{}, err
	}
	return att, nil
}

// ErrCorrupt is what a download's Content returns instead of io.EOF when the
// stored bytes do not match the size and SHA-256 recorded at upload.
var ErrCorrupt = errors.New("stored attachment bytes do not match their recorded size and SHA-256")

// Download is an authorized download.
type Download struct {
	Attachment domain.Attachment
	// Content yields the bytes. It returns io.EOF only after all of them
	// matched the recorded size and SHA-256, and ErrCorrupt otherwise, so
	// a reader that holds back its last chunk until io.EOF never passes on
	// a wrong file whole. The caller closes it.
	Content io.ReadCloser
}

// Download authorizes the caller for an attachment's bytes and records the
// download before any byte leaves.
func (a *App) Download(ctx context.Context, name string) (Download, error) {
	who, att, err := a.authorize(ctx, name, ActionDownload)
	if err != nil {
		return Download{}, err
	}
	rc, size, err := a.blobs.Open(att.ID)
	if err != nil {
		return Download{}, fmt.Errorf("attachment %s: %w", att.ID, err)
	}
	if size != att.SizeBytes {
		_ = rc.Close()
		return Download{}, fmt.Errorf("attachment %s: stored file has %d bytes, not %d: %w", att.ID, size, att.SizeBytes, ErrCorrupt)
	}
	meta := events.Meta(who, ActionDownload, att.Name(), a.now())
	meta.Detail = att.Conversation()
	if err := a.repo.Record(ctx, access(meta)); err != nil {
		_ = rc.Close()
		return Download{}, err
	}
	return Download{Attachment: att, Content: &verifier{rc: rc, h: sha256.New(), size: att.SizeBytes, want: att.SHA256, id: att.ID}}, nil
}

// verifier checks bytes against their recorded size and SHA-256 as they
// are read.
type verifier struct {
	rc   io.ReadCloser
	h    hash.Hash
	n    int64
	size int64
	want string
	id   string
}

func (v *verifier) Read(p []byte) (int, error) {
	n, err := v.rc.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.n > v.size {
		return n, fmt.Errorf("attachment %s: %w", v.id, ErrCorrupt)
	}
	if errors.Is(err, io.EOF) && (v.n != v.size || hex.EncodeToString(v.h.Sum(nil)) != v.want) {
		return n, fmt.Errorf("attachment %s: %w", v.id, ErrCorrupt)
	}
	return n, err
}

func (v *verifier) Close() error { return v.rc.Close() }

// ToProto renders an attachment.
func ToProto(a domain.Attachment) *attachmentv1.Attachment {
	return &attachmentv1.Attachment{
		Name: a.Name(), Conversation: a.Conversation(), Filename: a.Filename, ContentType: a.ContentType,
		SizeBytes: int32(a.SizeBytes), Sha256: a.SHA256, CreateTime: timestamppb.New(a.CreateTime),
	}
}

// broadcast wakes every waiter once per fire.
type broadcast struct {
	mu sync.Mutex
	ch chan struct{}
}

// wait returns a channel closed by the next fire.
func (b *broadcast) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

func (b *broadcast) fire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
}
