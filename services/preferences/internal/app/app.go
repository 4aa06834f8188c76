// Package app holds the preferences service's use cases and who may call
// them: the patient directory (upsert, get, search) and each patient's
// communication preferences. Every use case is scoped to the caller's
// practice; a patient of another practice, or another patient's data asked
// for by a patient, answers NOT_FOUND, and every refused attempt is recorded
// as an AccessRecorded DENIED event for the audit log.
package app

import (
	"context"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/events"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/preferences/internal/domain"
)

// Action names of the events this service publishes.
const (
	ActionPatientUpsert     = "patient.upsert"
	ActionPatientView       = "patient.view"
	ActionPatientSearch     = "patient.search"
	ActionPreferencesView   = "preferences.view"
	ActionPreferencesUpdate = "preferences.update"
)

// App runs the use cases over a repository.
type App struct {
	repo domain.Repository
	log  *zap.Logger
	now  func() time.Time
}

// New returns the use cases over repo; now is the clock (time.Now when nil).
func New(repo domain.Repository, log *zap.Logger, now func() time.Time) *App {
	if now == nil {
		now = time.Now
	}
	return &App{repo: repo, log: log, now: now}
}

// PatientName is the resource name of patient id.
func PatientName(id string) string { return "patients/" + id }

// PreferencesName is the resource name of patient id's preferences.
func PreferencesName(id string) string { return "patients/" + id + "/communicationPreferences" }

// deny records a refused attempt (AccessRecorded, outcome DENIED, detail the
// reason code) and returns err. The refusal stands even if recording fails;
// that failure is logged.
// caller is the verified caller the gRPC interceptor put in ctx.
func caller(ctx context.Context) (auth.Identity, error) {
	who, ok := auth.FromContext(ctx)
	if !ok {
		return auth.Identity{}, errs.Unauthenticated("Sign in again: the request carries no bearer token")
	}
	return who, nil
}

func (a *App) deny(ctx context.Context, who auth.Identity, action, resource string, err *errs.Error) error {
	meta := events.Denied(who, action, resource, err.Reason, a.now().UTC())
	ev := domain.Event{ID: meta.GetId(), Subject: natsx.Tenant(natsx.SubjectPreferencesAccess, meta.GetPractice()), Msg: &typev1.AccessRecorded{Meta: meta}}
	if rerr := a.repo.RecordEvents(ctx, ev); rerr != nil {
		a.log.Error("record denied access", zap.String(logkeys.Practice, who.Practice), zap.String(logkeys.Actor, who.Principal()),
			zap.String(logkeys.EventID, meta.GetId()), zap.String("action", action), zap.Error(rerr))
	}
	return err
}

// notFound refuses a patient's look at another patient: NOT_FOUND, never a
// hint that the other patient exists.
func (a *App) notFound(ctx context.Context, who auth.Identity, action, resource string) error {
	return a.deny(ctx, who, action, resource, domain.ErrPatientNotFound)
}

// PatientProto is p as the API shows it, with chat_eligible and
// ineligible_reason filled in.
func PatientProto(p *domain.Patient) *preferencesv1.Patient {
	ok, why := p.Eligibility()
	out := &preferencesv1.Patient{
		Name:             PatientName(p.ID),
		ExternalId:       p.ExternalID,
		DisplayName:      p.DisplayName,
		DateOfBirth:      p.DateOfBirth,
		HasPortalAccount: p.HasPortalAccount,
		ChatOptIn:        p.ChatOptIn,
		ChatEligible:     ok,
		UpdateTime:       timestamp(p.UpdateTime),
	}
	switch why {
	case domain.NoPortalAccount:
		out.IneligibleReason = preferencesv1.Patient_NO_PORTAL_ACCOUNT.Enum()
	case domain.ChatOptedOut:
		out.IneligibleReason = preferencesv1.Patient_CHAT_OPTED_OUT.Enum()
	}
	return out
}

// PreferencesProto is p's communication preferences as the API shows them.
func PreferencesProto(p *domain.Patient) *preferencesv1.CommunicationPreferences {
	return &preferencesv1.CommunicationPreferences{
		Name:       PreferencesName(p.ID),
		ChatOptIn:  p.ChatOptIn,
		UpdateTime: timestamp(p.PrefsUpdateTime),
	}
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
