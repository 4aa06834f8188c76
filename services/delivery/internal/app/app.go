// Package app holds the delivery service's use cases and their authorization.
package app

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/events"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/policy/messageview"
)

// ConversationRef is what delivery needs of a thread.
type ConversationRef struct {
	ID        string
	PatientID string
}

// Conversations authorizes the caller for a thread (port to conversation).
type Conversations interface {
	Resolve(ctx context.Context, conversationID string) (ConversationRef, error)
}

// PatientStatus is what delivery needs of a patient to send.
type PatientStatus struct {
	HasPortalAccount bool
	ChatOptIn        bool
	// DisplayName is the patient's name in the directory (PHI).
	DisplayName string
}

// Patients reads a patient's current chat eligibility (port to preferences).
// It must read committed state: no cache may let a send through after an opt-out.
type Patients interface {
	Status(ctx context.Context, patientID string) (PatientStatus, error)
}

// AttachmentInfo is an uploaded file's metadata.
type AttachmentInfo struct {
	Conversation string
	domain.AttachmentRef
}

// Attachments looks up uploads (port to attachment).
type Attachments interface {
	Get(ctx context.Context, name string) (AttachmentInfo, error)
}

// Artifacts looks up a patient's records in the practice system (port to
// the ArtifactProvider). Type is the artifactv1.Artifact_Type number.
type Artifacts interface {
	Get(ctx context.Context, practice, patientID string, typ int, ref string) (domain.Artifact, error)
	List(ctx context.Context, practice, patientID string, typ int, limit int) ([]domain.Artifact, error)
}

// App is the delivery application layer.
type App struct {
	repo          domain.Repository
	conversations Conversations
	patients      Patients
	attachments   Attachments
	artifacts     Artifacts // nil: no practice system connected
	log           *zap.Logger
	now           func() time.Time
	StepUpWindow  time.Duration
	marks         *marks
}

// New returns the application layer.
func New(repo domain.Repository, c Conversations, p Patients, att Attachments, art Artifacts, log *zap.Logger) *App {
	a := &App{repo: repo, conversations: c, patients: p, attachments: att, artifacts: art, log: log, now: time.Now,
		StepUpWindow: messageview.DefaultStepUpWindow}
	a.marks = &marks{window: DefaultMarkWindow, write: func(ctx context.Context, as []domain.Advance) error {
		return repo.MarkDelivered(ctx, markJoinDelay, as, updated)
	}}
	return a
}

func caller(ctx context.Context) (auth.Identity, error) {
	id, ok := auth.FromContext(ctx)
	if !ok {
		return id, errs.Unauthenticated("Sign in again: no verified caller")
	}
	return id, nil
}

type metaEvent interface {
	proto.Message
	GetMeta() *typev1.EventMeta
}

// ev is an event on base's subject for its practice, and for message
// events the thread's patient (natsx.Tenant). The base is chosen by the
// event's actor and action (natsx.PublishBase): the product's receipt
// status echoes go on their own kind, which the audit does not read, and a
// person's message.updated on the audited one.
func ev(base string, msg metaEvent) domain.Event {
	meta := msg.GetMeta()
	base = natsx.PublishBase(base, meta.GetActor(), meta.GetAction())
	var buf [2]string // the tokens, on the stack (Tenant keeps none)
	tokens := append(buf[:0], meta.GetPractice())
	if p, ok := msg.(interface{ GetPatient() string }); ok {
		tokens = append(tokens, p.GetPatient())
	}
	return domain.Event{ID: meta.GetId(), Subject: natsx.Tenant(base, tokens...), Msg: msg}
}

func access(subject string, meta *typev1.EventMeta) domain.Event {
	return ev(subject, &typev1.AccessRecorded{Meta: meta})
}

// refuse records a refused attempt (authorization or precondition) and returns err.
func (a *App) refuse(ctx context.Context, who auth.Identity, action, resource string, err error) error {
	var e *errs.Error
	if !errors.As(err, &e) {
		return err
	}
	if rerr := a.repo.Record(ctx, access(natsx.SubjectDeliveryAccess, events.Denied(who, action, resource, e.Reason, a.now()))); rerr != nil {
		return rerr
	}
	return err
}

// resolve authorizes who for the thread named parent.
func (a *App) resolve(ctx context.Context, who auth.Identity, parent, action string) (ConversationRef, error) {
	p, ok := ids.Parse(parent, "conversations")
	if !ok {
		return ConversationRef{}, domain.ErrBadParent
	}
	ref, err := a.conversations.Resolve(ctx, p[0])
	if err != nil {
		return ref, a.refuse(ctx, who, action, parent, err)
	}
	return ref, nil
}

// SendRequest is a send.
type SendRequest struct {
	Parent       string
	Text         string
	Sensitive    bool
	Attachments  []string
	ArtifactType int
	ArtifactRef  string
	RequestID    string
}

// Send stores a message once per (sender, requestId).
func (a *App) Send(ctx context.Context, r SendRequest) (domain.Message, error) {
	m, _, err := a.send(ctx, r)
	return m, err
}

// SendRendered is Send answering with the message rendered in full (what
// its sender sees): for a new message, the very Message its
// message.created event carries (marshaled into the outbox before Send
// returns, and not changed after), rendered once instead of twice.
func (a *App) SendRendered(ctx context.Context, r SendRequest) (*deliveryv1.Message, error) {
	m, rendered, err := a.send(ctx, r)
	if err != nil {
		return nil, err
	}
	if rendered == nil {
		rendered = ToProto(m)
	}
	return rendered, nil
}

// send is Send, with the rendering of the message its event carries when
// it stored a new one (nil for a repeat).
func (a *App) send(ctx context.Context, r SendRequest) (domain.Message, *deliveryv1.Message, error) {
	who, err := caller(ctx)
	if err != nil {
		return domain.Message{}, nil, err
	}
	if !who.IsStaff() && !who.IsSystem() && !who.IsPatient() {
		return domain.Message{}, nil, errs.PermissionDenied("This role cannot send messages")
	}
	r.Text = domain.NormalizeText(r.Text)
	hasArtifact := r.ArtifactType != 0 || r.ArtifactRef != ""
	if err := domain.ValidateSend(r.Text, len(r.Attachments), hasArtifact, r.RequestID); err != nil {
		return domain.Message{}, nil, err
	}
	if hasArtifact && (r.ArtifactType == 0 || r.ArtifactRef == "") {
		return domain.Message{}, nil, domain.ErrBadArtifact
	}
	p, ok := ids.Parse(r.Parent, "conversations")
	if !ok {
		return domain.Message{}, nil, domain.ErrBadParent
	}
	hash := domain.ContentHash(p[0], r.Text, r.Sensitive, r.Attachments, r.ArtifactType, r.ArtifactRef)
	m, err := a.prepareSend(ctx, who, r, p[0], hash)
	if err != nil {
		// A retry of a stored send answers with the first message, whatever
		// has changed since (an opt-out refuses new messages, not old ones):
		// looked up only when the send cannot go ahead, since a send that
		// can finds its retry inside the repository's write.
		if prev, ferr := a.repo.FindByRequest(ctx, who.Practice, who.Principal(), r.RequestID); ferr == nil {
			if prev.ContentHash != hash {
				return prev, nil, domain.ErrRequestIDReused
			}
			return prev, nil, nil
		} else if !errors.Is(ferr, domain.ErrNotFound) {
			return domain.Message{}, nil, ferr
		}
		var d refusal
		if errors.As(err, &d) {
			return domain.Message{}, nil, a.refuse(ctx, who, "message.send", r.Parent, d.err)
		}
		return domain.Message{}, nil, err
	}
	now := m.CreateTime
	var rendered *deliveryv1.Message // the last run's: the committed one (the write may run again)
	out, created, err := a.repo.Send(ctx, m, func(m domain.Message) []domain.Event {
		rendered = ToProto(m)
		e := ev(natsx.SubjectMessageCreated, &deliveryv1.MessageCreated{
			Meta: events.Meta(who, "message.send", m.Name(), now), Message: rendered, Patient: "patients/" + m.PatientID})
		e.Subject = natsx.CreatedSubject(e.Subject, len(m.Extras.Attachments) > 0)
		return []domain.Event{e}
	})
	if err != nil || !created {
		rendered = nil
	}
	return out, rendered, err
}

// refusal is a send refused for its caller or thread, recorded (refuse)
// unless the send turns out to be a retry of a stored one.
type refusal struct{ err error }

func (r refusal) Error() string { return r.err.Error() }

// prepareSend checks a new send against its thread, the patient's status,
// its attachments and artifact, and builds the message; a refusal to record
// comes back as refusal.
func (a *App) prepareSend(ctx context.Context, who auth.Identity, r SendRequest, convID, hash string) (domain.Message, error) {
	conv, err := a.conversations.Resolve(ctx, convID)
	if err != nil {
		var e *errs.Error
		if errors.As(err, &e) {
			return domain.Message{}, refusal{err}
		}
		return domain.Message{}, err
	}
	// The send is accepted at this instant: the eligibility read below comes
	// after it, so a message is never stamped later than an opt-out it missed.
	now := a.now().UTC().Truncate(time.Microsecond)
	st, err := a.patients.Status(ctx, conv.PatientID)
	if err != nil {
		return domain.Message{}, err
	}
	switch {
	case !st.HasPortalAccount:
		return domain.Message{}, refusal{domain.ErrNoPortal}
	case !st.ChatOptIn && who.IsPatient():
		return domain.Message{}, refusal{domain.ErrSelfOptedOut}
	case !st.ChatOptIn:
		return domain.Message{}, refusal{domain.ErrOptedOut}
	}
	m := domain.Message{
		Practice: who.Practice, ConversationID: conv.ID, PatientID: conv.PatientID,
		Sender: who.Principal(), SenderRole: who.Role, FromPatient: who.IsPatient(),
		Text: r.Text, Sensitive: r.Sensitive, Status: domain.Sent, CreateTime: now,
		RequestID: r.RequestID, ContentHash: hash, SenderDisplayName: who.Name,
	}
	if who.IsPatient() {
		m.SenderDisplayName = st.DisplayName
	}
	for _, name := range r.Attachments {
		info, err := a.attachments.Get(ctx, name)
		if err != nil {
			return domain.Message{}, err
		}
		if info.Conversation != r.Parent {
			return domain.Message{}, domain.ErrAttachmentOther
		}
		m.Extras.Attachments = append(m.Extras.Attachments, info.AttachmentRef)
	}
	hasArtifact := r.ArtifactType != 0 || r.ArtifactRef != ""
	if hasArtifact {
		if a.artifacts == nil {
			return domain.Message{}, domain.ErrNoArtifactSource
		}
		art, err := a.artifacts.Get(ctx, who.Practice, conv.PatientID, r.ArtifactType, r.ArtifactRef)
		if err != nil {
			return domain.Message{}, err
		}
		m.Extras.Artifact = &art
	}
	return m, nil
}

// parseMessage parses "conversations/{c}/messages/{seq}".
func parseMessage(name string) (string, int64, error) {
	p, ok := ids.Parse(name, "conversations", "messages")
	if !ok {
		return "", 0, domain.ErrBadName
	}
	seq, err := strconv.ParseInt(p[1], 10, 64)
	if err != nil || seq <= 0 {
		return "", 0, domain.ErrNotFound
	}
	return p[0], seq, nil
}

// Get returns one message as the caller may see it, and records the view
// (or the unlock of a sensitive message).
func (a *App) Get(ctx context.Context, name string) (*deliveryv1.Message, error) {
	who, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	convID, seq, err := parseMessage(name)
	if err != nil {
		return nil, err
	}
	if _, err := a.resolve(ctx, who, "conversations/"+convID, "message.view"); err != nil {
		return nil, err
	}
	m, err := a.repo.Get(ctx, who.Practice, convID, seq)
	if err != nil {
		return nil, err
	}
	list, err := a.present(ctx, who, []domain.Message{m}, "message.view", name)
	if err != nil {
		return nil, err
	}
	return list[0], nil
}

// List returns a thread's messages newest first and records the view.
func (a *App) List(ctx context.Context, parent string, pageSize int, pageToken string) ([]*deliveryv1.Message, string, error) {
	who, err := caller(ctx)
	if err != nil {
		return nil, "", err
	}
	conv, err := a.resolve(ctx, who, parent, "message.list")
	if err != nil {
		return nil, "", err
	}
	if pageSize <= 0 {
		pageSize = 50
	}
	pageSize = min(pageSize, 200)
	var before int64
	if pageToken != "" {
		if before, err = strconv.ParseInt(pageToken, 10, 64); err != nil || before <= 0 {
			return nil, "", errs.InvalidArgument("pageToken is not one this service returned")
		}
	}
	msgs, err := a.repo.List(ctx, who.Practice, conv.ID, before, pageSize+1)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(msgs) > pageSize {
		msgs = msgs[:pageSize]
		next = strconv.FormatInt(msgs[pageSize-1].Seq, 10)
	}
	out, err := a.present(ctx, who, msgs, "message.list", parent)
	return out, next, err
}

// present renders msgs for who: applies the sensitive rule, records the view
// and each unlock, and counts a recipient's fetch as delivery.
func (a *App) present(ctx context.Context, who auth.Identity, msgs []domain.Message, action, resource string) ([]*deliveryv1.Message, error) {
	now := a.now()
	evs := []domain.Event{access(natsx.SubjectDeliveryAccess, events.Meta(who, action, resource, now))}
	out := make([]*deliveryv1.Message, 0, len(msgs))
	var deliverTo int64
	convID := ""
	for _, m := range msgs {
		v := messageview.Apply(ToProto(m), who, now, a.StepUpWindow) // ToProto's message is new: no copy
		if m.Sensitive && who.IsPatient() && !v.GetLocked() && m.FromPatient != who.IsPatient() {
			evs = append(evs, access(natsx.SubjectDeliveryAccess, events.Meta(who, "message.unlock", m.Name(), now)))
		}
		if m.FromPatient != who.IsPatient() && m.Status < domain.Delivered && (who.IsPatient() || who.IsStaff()) {
			deliverTo = max(deliverTo, m.Seq)
			convID = m.ConversationID
		}
		out = append(out, v)
	}
	if err := a.repo.Record(ctx, evs...); err != nil {
		return nil, err
	}
	if deliverTo > 0 {
		changed, err := a.advance(ctx, who, convID, deliverTo, domain.Delivered)
		if err != nil {
			return nil, err
		}
		byName := map[string]domain.Message{}
		for _, c := range changed {
			byName[c.Name()] = c
		}
		for i, p := range out {
			if c, ok := byName[p.GetName()]; ok {
				out[i].Status = deliveryv1.Message_Status(c.Status)
				out[i].DeliverTime = ToProto(c).GetDeliverTime()
			}
		}
	}
	return out, nil
}

func (a *App) advance(ctx context.Context, who auth.Identity, convID string, upTo int64, to domain.Status) ([]domain.Message, error) {
	return a.advanceAs(ctx, a.receipt(who, convID, upTo, to))
}

// receipt is who's receipt for the thread's messages up to upTo, now.
func (a *App) receipt(who auth.Identity, convID string, upTo int64, to domain.Status) domain.Advance {
	return domain.Advance{Practice: who.Practice, ConversationID: convID, ReaderIsPatient: who.IsPatient(),
		Reader: who.Principal(), UpTo: upTo, To: to, At: a.now().UTC().Truncate(time.Microsecond)}
}

func (a *App) advanceAs(ctx context.Context, adv domain.Advance) ([]domain.Message, error) {
	changed, err := a.repo.Advance(ctx, adv, func(ms []domain.Message) []domain.Event { return updated(adv, ms) })
	slices.SortFunc(changed, bySeq)
	return changed, err
}

// bySeq orders messages by their seq (slices.SortFunc: no allocation,
// unlike sort.Slice).
func bySeq(a, b domain.Message) int { return cmp.Compare(a.Seq, b.Seq) }

// updated is a receipt advance's message.updated events (system echoes:
// natsx.PublishBase puts them on delivery.message.status): one event for
// the messages it changed, in seq order, instead of one each — a run of
// messages costs one outbox row, one publish and one delivery to each
// gateway. An advance over more messages than one event should carry is
// split into events of at most maxStatusMessages messages and about
// maxStatusBytes each (a message above that goes alone). An event of one
// message has it in message, as before the batched form existed (so a
// gateway of an older version still shows it); one of several in messages.
func updated(adv domain.Advance, ms []domain.Message) []domain.Event {
	if len(ms) == 0 {
		return nil
	}
	slices.SortFunc(ms, bySeq)
	out := make([]domain.Event, 0, (len(ms)+maxStatusMessages-1)/maxStatusMessages)
	var chunk []*deliveryv1.Message
	size := 0
	emit := func() {
		first := ms[0]
		e := &deliveryv1.MessageUpdated{Patient: "patients/" + first.PatientID}
		if len(chunk) == 1 {
			e.Meta = events.System(first.Practice, "message.status", chunk[0].GetName(), adv.At)
			e.Message = chunk[0]
		} else {
			e.Meta = events.System(first.Practice, "message.status", first.Conversation(), adv.At)
			e.Messages = chunk
		}
		out = append(out, ev(natsx.SubjectMessageUpdated, e))
		chunk, size = nil, 0
	}
	for _, m := range ms {
		p := ToProto(m)
		n := proto.Size(p)
		if len(chunk) > 0 && (len(chunk) == maxStatusMessages || size+n > maxStatusBytes) {
			emit()
		}
		if chunk == nil {
			chunk = make([]*deliveryv1.Message, 0, min(len(ms), maxStatusMessages))
		}
		chunk, size = append(chunk, p), size+n
	}
	emit()
	return out
}

// The bounds of one receipt echo (updated): its messages and their encoded
// bytes.
const (
	maxStatusMessages = 64
	maxStatusBytes    = 64 << 10
)

// MarkDelivered records that messages reached a live stream of the caller.
// It returns once the receipt is durably committed.
func (a *App) MarkDelivered(ctx context.Context, parent string, upTo int64) (int64, error) {
	who, err := caller(ctx)
	if err != nil {
		return 0, err
	}
	if !who.IsPatient() && !who.IsStaff() {
		return 0, domain.ErrNotRecipient
	}
	conv, err := a.resolve(ctx, who, parent, "message.deliver")
	if err != nil {
		return 0, err
	}
	// Grouped with the other receipts of the moment into one transaction
	// (marks); answered once it is committed.
	if err := a.marks.mark(ctx, a.receipt(who, conv.ID, upTo, domain.Delivered)); err != nil {
		return 0, err
	}
	return upTo, nil
}

// ApplyRead moves messages of the other side of reader to READ (the consumer
// of conversation.read). Idempotent: replays and stale watermarks change nothing.
func (a *App) ApplyRead(ctx context.Context, practice, conversationID, reader, readerRole string, upTo int64) error {
	_, err := a.advanceAs(ctx, a.readAdvance(practice, conversationID, reader, readerRole, upTo))
	return err
}

func (a *App) readAdvance(practice, conversationID, reader, readerRole string, upTo int64) domain.Advance {
	return domain.Advance{Practice: practice, ConversationID: conversationID, ReaderIsPatient: readerRole == auth.RolePatient,
		Reader: reader, UpTo: upTo, To: domain.Read, At: a.now().UTC().Truncate(time.Microsecond)}
}

// ListArtifacts lists a patient's recent records for the slash shortcuts.
func (a *App) ListArtifacts(ctx context.Context, parent string, typ int, pageSize int) ([]domain.Artifact, error) {
	who, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if !who.IsStaff() && !who.IsSystem() {
		return nil, domain.ErrStaffOnly
	}
	p, ok := ids.Parse(parent, "patients")
	if !ok {
		return nil, errs.InvalidArgument("parent must look like patients/{patient}")
	}
	if a.artifacts == nil {
		return nil, domain.ErrNoArtifactSource
	}
	// The patient must be one of the caller's practice (the preferences
	// service answers as the caller): another practice's, or an invented
	// id, is NOT_FOUND before the practice system is asked.
	if _, err := a.patients.Status(ctx, p[0]); err != nil {
		if errors.Is(err, errs.NotFound("")) {
			return nil, a.refuse(ctx, who, "artifact.list", parent, errs.NotFound("Patient not found"))
		}
		return nil, err
	}
	if pageSize <= 0 {
		pageSize = 10
	}
	return a.artifacts.List(ctx, who.Practice, p[0], typ, min(pageSize, 50))
}
