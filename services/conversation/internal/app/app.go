// Package app holds the conversation service's use cases and their
// authorization. Every use case takes the verified caller from the context.
package app

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/events"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/textfold"
)

// Patient is what the conversation service needs of the patient directory.
type Patient struct {
	ID               string
	DisplayName      string
	HasPortalAccount bool
}

// PatientDirectory looks up a patient as the caller (port to preferences).
type PatientDirectory interface {
	GetPatient(ctx context.Context, patientID string) (Patient, error)
}

// App is the conversation service's application layer.
type App struct {
	repo         domain.Repository
	patients     PatientDirectory
	log          *zap.Logger
	now          func() time.Time
	ArchiveAfter time.Duration
	// ProjectionWait is how long MarkRead waits for a message it was told of
	// to reach the projection (derived state lags writes by well under this).
	ProjectionWait time.Duration
	// NoNotificationRequests: a new message publishes no
	// notification.requested events (where no notifier can read them).
	NoNotificationRequests bool

	seqs  seqWaiters // MarkRead calls waiting for the projection
	staff staffCache
}

// New returns the application layer.
func New(repo domain.Repository, patients PatientDirectory, log *zap.Logger) *App {
	return &App{repo: repo, patients: patients, log: log, now: time.Now, ArchiveAfter: 365 * 24 * time.Hour, ProjectionWait: 2 * time.Second}
}

func caller(ctx context.Context) (auth.Identity, error) {
	id, ok := auth.FromContext(ctx)
	if !ok {
		return id, errs.Unauthenticated("Sign in again: no verified caller")
	}
	return id, nil
}

// caller is the verified caller; a staff caller is recorded as seen by the
// practice (for assignment) when new or when their name or role changed.
func (a *App) caller(ctx context.Context) (auth.Identity, error) {
	who, err := caller(ctx)
	if err != nil || !who.IsStaff() {
		return who, err
	}
	return who, a.staff.see(ctx, a.repo, who, a.now())
}

func viewer(id auth.Identity) domain.Viewer {
	return domain.Viewer{Principal: id.Principal(), IsPatient: id.IsPatient()}
}

// ev is an event on base's subject for its practice, then (natsx.Tenant)
// the thread's patient for thread events, or the user for a user's own
// state, so a patient's event stream can ask for its own thread only. The
// base is chosen by the event's actor and action (natsx.PublishBase): the
// product's thread activity echoes go on their own kind, which the audit
// does not read, and any other conversation.updated on the audited one.
func ev(base string, msg interface {
	proto.Message
	GetMeta() *typev1.EventMeta
}) domain.Event {
	meta := msg.GetMeta()
	base = natsx.PublishBase(base, meta.GetActor(), meta.GetAction())
	var buf [2]string // the tokens, on the stack (Tenant keeps none)
	tokens := append(buf[:0], meta.GetPractice())
	switch m := msg.(type) {
	case *conversationv1.ConversationCreated:
		tokens = append(tokens, m.GetConversation().GetPatient())
	case *conversationv1.ConversationUpdated:
		tokens = append(tokens, m.GetConversation().GetPatient())
	case *conversationv1.ConversationUserStateChanged:
		tokens = append(tokens, m.GetUser())
	case *conversationv1.ConversationRead:
		// The reader: a gateway keeping the reader's unread counts reads it.
		tokens = append(tokens, m.GetReader())
	}
	return domain.Event{ID: meta.GetId(), Subject: natsx.Tenant(base, tokens...), Msg: msg}
}

// denied records a refused attempt and returns err.
func (a *App) denied(ctx context.Context, who auth.Identity, action, resource string, err error) error {
	e := errs.Reason(err)
	rec := &typev1.AccessRecorded{Meta: events.Denied(who, action, resource, e, a.now())}
	if rerr := a.repo.Record(ctx, ev(natsx.SubjectConversationAccess, rec)); rerr != nil {
		return rerr
	}
	return err
}

// ParseName parses "conversations/{id}".
func ParseName(name string) (string, error) {
	p, ok := ids.Parse(name, "conversations")
	if !ok {
		return "", domain.ErrBadName
	}
	return p[0], nil
}

// Create finds the patient's thread or starts it. Staff and system only.
func (a *App) Create(ctx context.Context, patient string) (domain.Conversation, error) {
	who, err := a.caller(ctx)
	if err != nil {
		return domain.Conversation{}, err
	}
	if !who.IsStaff() && !who.IsSystem() {
		return domain.Conversation{}, a.denied(ctx, who, "conversation.create", "conversations", domain.ErrStaffOnly)
	}
	p, ok := ids.Parse(patient, "patients")
	if !ok {
		return domain.Conversation{}, domain.ErrBadPatient
	}
	pat, err := a.patients.GetPatient(ctx, p[0])
	if err != nil {
		return domain.Conversation{}, err
	}
	if !pat.HasPortalAccount {
		return domain.Conversation{}, a.denied(ctx, who, "conversation.create", patient, domain.ErrNoPortal)
	}
	now := a.now().UTC().Truncate(time.Microsecond)
	c := domain.Conversation{Practice: who.Practice, ID: ids.New(), PatientID: pat.ID, PatientDisplayName: pat.DisplayName,
		State: domain.Active, CreateTime: now}
	out, created, err := a.repo.Create(ctx, c, func(c domain.Conversation) []domain.Event {
		return []domain.Event{ev(natsx.SubjectConversationCreated, &conversationv1.ConversationCreated{
			Meta: events.Meta(who, "conversation.create", c.Name(), now), Conversation: ToProto(c)})}
	})
	if err != nil {
		return out, err
	}
	if !created {
		// Found: the caller opens the existing thread.
		if err := a.repo.Record(ctx, ev(natsx.SubjectConversationAccess,
			&typev1.AccessRecorded{Meta: events.Meta(who, "conversation.view", out.Name(), now)})); err != nil {
			return out, err
		}
	}
	return a.repo.Get(ctx, who.Practice, out.ID, viewer(who))
}

// load gets a thread the caller participates in, or records a refusal of
// action and answers NOT_FOUND.
func (a *App) load(ctx context.Context, name, action string) (auth.Identity, domain.Conversation, error) {
	return a.loadFrom(ctx, name, action, action == "")
}

// loadFrom is load; shared reads the thread without the caller's per-user
// state (no unread count, which scans the unread messages).
func (a *App) loadFrom(ctx context.Context, name, action string, shared bool) (auth.Identity, domain.Conversation, error) {
	who, err := a.caller(ctx)
	if err != nil {
		return who, domain.Conversation{}, err
	}
	id, err := ParseName(name)
	if err != nil {
		return who, domain.Conversation{}, err
	}
	var c domain.Conversation
	if shared {
		c, err = a.repo.GetShared(ctx, who.Practice, id) // authorization only
	} else {
		c, err = a.repo.Get(ctx, who.Practice, id, viewer(who))
	}
	if err == nil && !domain.Participant(c, who.Practice, who.Subject, who.IsStaff() || who.IsSystem(), who.IsPatient()) {
		err = domain.ErrNotFound
	}
	if errors.Is(err, domain.ErrNotFound) && action != "" {
		return who, c, a.denied(ctx, who, action, name, err)
	}
	return who, c, err
}

// Get returns a thread and records the view.
func (a *App) Get(ctx context.Context, name string) (domain.Conversation, error) {
	who, c, err := a.load(ctx, name, "conversation.view")
	if err != nil {
		return c, err
	}
	return ForViewer(who, c), a.repo.Record(ctx, ev(natsx.SubjectConversationAccess,
		&typev1.AccessRecorded{Meta: events.Meta(who, "conversation.view", c.Name(), a.now())}))
}

// Resolve authorizes the caller for a thread and returns it, for other
// services; a refusal is recorded by the service that acts, not here.
func (a *App) Resolve(ctx context.Context, name string) (domain.Conversation, error) {
	_, c, err := a.load(ctx, name, "")
	return c, err
}

// ListRequest is a list call.
type ListRequest struct {
	Query     string
	Archived  bool
	Names     []string
	PageSize  int
	PageToken string
	// AwaitingReply and Assignee are staff-only filters.
	AwaitingReply bool
	Assignee      string
}

// List lists the practice's threads for staff, the patient's own for a patient.
func (a *App) List(ctx context.Context, r ListRequest) ([]domain.Conversation, string, error) {
	who, err := a.caller(ctx)
	if err != nil {
		return nil, "", err
	}
	q := domain.ListQuery{Practice: who.Practice, Viewer: viewer(who), Words: textfold.Words(r.Query), Archived: r.Archived,
		AwaitingReply: r.AwaitingReply, Assignee: r.Assignee}
	if r.Assignee != "" {
		if _, ok := ids.Parse(r.Assignee, "users"); !ok {
			return nil, "", errs.InvalidArgument("assignee must look like users/{u}")
		}
	}
	switch {
	case who.IsPatient():
		if r.AwaitingReply || r.Assignee != "" {
			return nil, "", domain.ErrStaffOnly
		}
		q.PatientID = who.Subject
	case who.IsStaff() || who.IsSystem():
	default:
		return nil, "", domain.ErrStaffOnly
	}
	if len(r.Names) > 100 {
		return nil, "", errs.InvalidArgument("names may list at most 100 conversations")
	}
	for _, n := range r.Names {
		id, err := ParseName(n)
		if err != nil {
			return nil, "", err
		}
		q.IDs = append(q.IDs, id)
	}
	q.Limit = r.PageSize
	if q.Limit <= 0 {
		q.Limit = 50
	}
	q.Limit = min(q.Limit, 200)
	if r.PageToken != "" {
		cur, err := decodeCursor(r.PageToken)
		if err != nil {
			return nil, "", err
		}
		if cur.Awaiting != q.AwaitingReply {
			return nil, "", errBadPageToken
		}
		q.After = cur
	}
	list, next, err := a.repo.List(ctx, q)
	for i := range list {
		list[i] = ForViewer(who, list[i])
	}
	if err != nil || next == nil {
		return list, "", err
	}
	return list, encodeCursor(next), nil
}

func encodeCursor(c *domain.Cursor) string {
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string) (*domain.Cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	var c domain.Cursor
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err != nil {
		return nil, errBadPageToken
	}
	return &c, nil
}

var errBadPageToken = errs.InvalidArgument("pageToken is not one this service returned")

// SetFlags pins, unpins, mutes or unmutes for the calling staff user.
func (a *App) SetFlags(ctx context.Context, name, action string, f domain.UserFlags) (domain.Conversation, error) {
	who, c, err := a.load(ctx, name, action)
	if err != nil {
		return c, err
	}
	if !who.IsStaff() {
		return c, a.denied(ctx, who, action, name, domain.ErrStaffOnly)
	}
	now := a.now()
	return a.repo.SetFlags(ctx, who.Practice, c.ID, viewer(who), f, func(c domain.Conversation) []domain.Event {
		return []domain.Event{ev(natsx.SubjectConversationUser, &conversationv1.ConversationUserStateChanged{
			Meta: events.Meta(who, action, c.Name(), now), Conversation: c.Name(), User: who.Principal(),
			Pinned: c.Pinned, Muted: c.Muted})}
	})
}

// MarkRead raises the caller's read watermark to upTo ("" = everything).
// It authorizes on the shared thread, read in the write's transaction with
// the caller's watermark and unread count: one job of the writer and no
// read of its own. An upTo past the projection's last message waits for the
// projection (awaitSeq) outside the writer and tries again.
func (a *App) MarkRead(ctx context.Context, name, upTo string) (domain.Conversation, error) {
	who, err := a.caller(ctx)
	if err != nil {
		return domain.Conversation{}, err
	}
	id, err := ParseName(name)
	if err != nil {
		return domain.Conversation{}, err
	}
	var want int64 // 0: the thread's last message
	var upToErr error
	if upTo != "" {
		upToErr = domain.ErrBadUpTo
		if p, ok := ids.Parse(upTo, "conversations", "messages"); ok && p[0] == id {
			if n, err := strconv.ParseInt(p[1], 10, 64); err == nil && n > 0 {
				want, upToErr = n, nil
			}
		}
	}
	await := false // wait for the projection before raising
	check := func(c domain.Conversation) error {
		// The errors in load's order: a thread the caller is not in, then upTo.
		if !domain.Participant(c, who.Practice, who.Subject, who.IsStaff() || who.IsSystem(), who.IsPatient()) {
			return domain.ErrNotFound
		}
		switch {
		case upToErr != nil:
			return upToErr
		case want > c.LastMessageSeq+MaxUpToAhead:
			return domain.ErrUpToAhead
		case want > c.LastMessageSeq && !await:
			// The caller saw a message the projection has not applied yet.
			await = true
			return errAwaitProjection
		}
		return nil
	}
	now := a.now()
	evs := func(c domain.Conversation, advanced bool) []domain.Event {
		if !advanced {
			return []domain.Event{ev(natsx.SubjectConversationAccess,
				&typev1.AccessRecorded{Meta: events.Meta(who, "conversation.read", c.Name(), now)})}
		}
		return []domain.Event{ev(natsx.SubjectConversationRead, &conversationv1.ConversationRead{
			Meta: events.Meta(who, "conversation.read", c.Name(), now), Conversation: c.Name(),
			Reader: who.Principal(), ReaderRole: who.Role, UpToSeq: c.ReadSeq})}
	}
	out, err := a.repo.MarkRead(ctx, who.Practice, id, viewer(who), want, check, evs)
	if errors.Is(err, errAwaitProjection) {
		a.awaitSeq(ctx, who, domain.Conversation{Practice: who.Practice, ID: id}, want)
		out, err = a.repo.MarkRead(ctx, who.Practice, id, viewer(who), want, check, evs)
	}
	if errors.Is(err, domain.ErrNotFound) {
		return domain.Conversation{}, a.denied(ctx, who, "conversation.read", name, err)
	}
	return ForViewer(who, out), err
}

// errAwaitProjection: MarkRead's upTo is past the projection's last message.
var errAwaitProjection = errors.New("upTo past the projected messages")

// ApplyMessage projects one new message (ApplyMessages of one).
func (a *App) ApplyMessage(ctx context.Context, m domain.MessageApplied, practiceName string) error {
	return a.ApplyMessages(ctx, []domain.MessageApplied{m}, func(string) string { return practiceName })[0]
}

// ApplyMessages projects new messages in one transaction: last message
// fields, reactivation, needs reply, unread counts, and for each message a
// ConversationUpdated with the thread as of that message and the
// notifications of its recipients. It returns one error per message: when
// the transaction fails, the batch is split in halves and each applied on
// its own, down to single messages, so that one message that cannot be
// applied fails alone. A message for an unknown thread is logged and
// dropped (nil).
func (a *App) ApplyMessages(ctx context.Context, ms []domain.MessageApplied, practiceName func(string) string) []error {
	errs := make([]error, len(ms))
	a.applyMessages(ctx, ms, practiceName, errs)
	return errs
}

func (a *App) applyMessages(ctx context.Context, ms []domain.MessageApplied, practiceName func(string) string, errs []error) {
	out, err := a.repo.ApplyMessages(ctx, ms, func(m domain.MessageApplied, c domain.Conversation, recipients []string) []domain.Event {
		if a.NoNotificationRequests {
			recipients = nil
		}
		return messageEvents(m, c, recipients, practiceName)
	})
	if err != nil {
		if len(ms) == 1 || ctx.Err() != nil {
			for i := range errs {
				errs[i] = err
			}
			return
		}
		h := len(ms) / 2 // the earlier half first: the stream's order
		a.applyMessages(ctx, ms[:h], practiceName, errs[:h])
		a.applyMessages(ctx, ms[h:], practiceName, errs[h:])
		return
	}
	fired := map[string]bool{}
	for i, m := range ms {
		switch out[i] {
		case domain.Applied:
			if k := convKey(m.Practice, m.ConversationID); !fired[k] {
				fired[k] = true
				a.seqs.fire(k)
			}
		case domain.NoThread:
			a.log.Error("message for an unknown conversation", zap.String(logkeys.Practice, m.Practice), zap.String(logkeys.Conversation, m.ConversationID))
		}
	}
}

// messageEvents are the events of message m, applied to thread c: the
// thread's update, then a notification for each recipient but the sender.
func messageEvents(m domain.MessageApplied, c domain.Conversation, recipients []string, practiceName func(string) string) []domain.Event {
	out := make([]domain.Event, 0, 1+len(recipients))
	// The thread's name made once, for every event (it was made for each).
	name := c.Name()
	out = append(out, ev(natsx.SubjectConversationUpdated, &conversationv1.ConversationUpdated{
		Meta: events.System(c.Practice, "conversation.activity", name, m.Time), Conversation: toProtoNamed(Shared(c), name),
		MessageSeq: m.Seq, MessageFromPatient: m.FromPatient}))
	msgName := name + "/messages/" + strconv.FormatInt(m.Seq, 10)
	title := ""
	for _, r := range recipients {
		if r == m.Sender {
			continue
		}
		if title == "" {
			title = "New message from " + practiceName(c.Practice)
		}
		out = append(out, ev(natsx.SubjectNotification, &conversationv1.Notification{
			Meta:      events.System(c.Practice, "notification.request", msgName, m.Time),
			Recipient: r, Message: msgName, Conversation: name, Title: title,
		}))
	}
	return out
}

// RenamePatient follows the patient directory.
func (a *App) RenamePatient(ctx context.Context, practice, patientID, displayName string) error {
	return a.repo.RenamePatient(ctx, practice, patientID, displayName)
}

// ArchiveIdle archives every thread with no message for ArchiveAfter.
func (a *App) ArchiveIdle(ctx context.Context) (int, error) {
	before := a.now().Add(-a.ArchiveAfter)
	total := 0
	for {
		n, err := a.repo.ArchiveIdle(ctx, before, 500, func(c domain.Conversation) []domain.Event {
			return []domain.Event{ev(natsx.SubjectConversationUpdated, &conversationv1.ConversationUpdated{
				Meta: events.System(c.Practice, "conversation.archive", c.Name(), a.now()), Conversation: ToProto(c)})}
		})
		total += n
		if err != nil || n < 500 {
			return total, err
		}
	}
}

// Assign assigns the thread to a staff user the practice has seen ("users/u"),
// or clears the assignment (""). Staff only; audited as conversation.assign
// and published as ConversationUpdated.
func (a *App) Assign(ctx context.Context, name, assignee string) (domain.Conversation, error) {
	const action = "conversation.assign"
	who, c, err := a.load(ctx, name, action)
	if err != nil {
		return c, err
	}
	if !who.IsStaff() {
		return c, a.denied(ctx, who, action, name, domain.ErrStaffOnly)
	}
	if assignee != "" {
		if _, ok := ids.Parse(assignee, "users"); !ok {
			return c, domain.ErrBadAssignee
		}
	}
	now := a.now()
	return a.repo.Assign(ctx, who.Practice, c.ID, assignee, viewer(who), func(c domain.Conversation) []domain.Event {
		meta := events.Meta(who, action, c.Name(), now)
		meta.Detail = "assignee=" + assignee // a user id, not PHI; empty: unassigned
		return []domain.Event{ev(natsx.SubjectConversationUpdated, &conversationv1.ConversationUpdated{
			Meta: meta, Conversation: ToProto(Shared(c))})}
	})
}

// ListStaff lists the staff users the practice has seen. Staff only.
func (a *App) ListStaff(ctx context.Context, pageSize int, pageToken string) ([]domain.StaffMember, string, error) {
	who, err := a.caller(ctx)
	if err != nil {
		return nil, "", err
	}
	if !who.IsStaff() {
		return nil, "", a.denied(ctx, who, "staff.list", "staff", domain.ErrStaffOnly)
	}
	limit := pageSize
	if limit <= 0 {
		limit = 200
	}
	limit = min(limit, 1000)
	var after *domain.StaffCursor
	if pageToken != "" {
		b, err := base64.RawURLEncoding.DecodeString(pageToken)
		var c domain.StaffCursor
		if err == nil {
			err = json.Unmarshal(b, &c)
		}
		if err != nil {
			return nil, "", errBadPageToken
		}
		after = &c
	}
	list, more, err := a.repo.ListStaff(ctx, who.Practice, after, limit)
	if err != nil || !more {
		return list, "", err
	}
	last := list[len(list)-1]
	b, _ := json.Marshal(domain.StaffCursor{DisplayName: last.DisplayName, User: last.User})
	return list, base64.RawURLEncoding.EncodeToString(b), nil
}

// ForViewer hides staff-only fields (needs reply, assignment) from a patient.
func ForViewer(who auth.Identity, c domain.Conversation) domain.Conversation {
	if !who.IsStaff() && !who.IsSystem() {
		c.AwaitingReplySince, c.Assignee, c.AssigneeDisplayName = time.Time{}, "", ""
	}
	return c
}

// Shared strips per-user fields, for events everyone may receive.
func Shared(c domain.Conversation) domain.Conversation {
	c.Pinned, c.Muted, c.ReadSeq, c.UnreadCount = false, false, 0, 0
	return c
}

// ToProto renders a thread.
func ToProto(c domain.Conversation) *conversationv1.Conversation { return toProtoNamed(c, c.Name()) }

// toProtoNamed is ToProto of c, whose name (c.Name()) the caller has.
func toProtoNamed(c domain.Conversation, name string) *conversationv1.Conversation {
	// The thread and its times in one allocation (the times live as long as
	// the thread that points to them).
	a := new(conversationAlloc)
	out := &a.conv
	out.Name = name
	out.Patient = c.Patient()
	out.PatientDisplayName = c.PatientDisplayName
	out.State = conversationv1.Conversation_State(c.State)
	out.CreateTime = a.time(0, c.CreateTime)
	out.LastMessagePreview = c.LastMessagePreview
	out.UnreadCount = int32(c.UnreadCount)
	out.Pinned = c.Pinned
	out.Muted = c.Muted
	out.LastMessageSeq = int32(c.LastMessageSeq)
	out.Assignee = c.Assignee
	out.AssigneeDisplayName = c.AssigneeDisplayName
	if !c.LastMessageTime.IsZero() {
		out.LastMessageTime = a.time(1, c.LastMessageTime)
	}
	if !c.AwaitingReplySince.IsZero() {
		out.AwaitingReplySince = a.time(2, c.AwaitingReplySince)
	}
	return out
}

// conversationAlloc is a rendered thread and room for its three times.
type conversationAlloc struct {
	conv  conversationv1.Conversation
	times [3]timestamppb.Timestamp
}

// time is t in the i-th time, as timestamppb.New gives it.
func (a *conversationAlloc) time(i int, t time.Time) *timestamppb.Timestamp {
	ts := &a.times[i]
	ts.Seconds, ts.Nanos = t.Unix(), int32(t.Nanosecond())
	return ts
}
