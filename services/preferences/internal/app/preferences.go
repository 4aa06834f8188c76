package app

import (
	"context"
	"strconv"
	"time"

	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/events"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/preferences/internal/domain"
)

// GetPreferences returns patient id's communication preferences, read from
// the repository (which sees every write that has returned). Callers: staff, system and the patient themself.
// A patient not in the directory answers NOT_FOUND.
func (a *App) GetPreferences(ctx context.Context, id string) (*domain.Patient, error) {
	who, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := a.mayRead(ctx, who, id, ActionPreferencesView, PreferencesName(id)); err != nil {
		return nil, err
	}
	return a.repo.GetPatient(ctx, who.Practice, id)
}

// UpdatePreferences sets the patient's own chat opt-in. Only the patient
// changes it: staff and systems are refused (PERMISSION_DENIED), another
// patient answers NOT_FOUND, both recorded as denied. The change commits with
// its PreferencesChanged event (action preferences.update) and governs the
// very next read; setting the value it already has changes nothing.
func (a *App) UpdatePreferences(ctx context.Context, id string, chatOptIn bool) (*domain.Patient, error) {
	who, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	resource := PreferencesName(id)
	switch {
	case !who.IsPatient():
		return nil, a.deny(ctx, who, ActionPreferencesUpdate, resource,
			errs.PermissionDenied("Only the patient can change their communication preferences"))
	case who.Subject != id:
		return nil, a.notFound(ctx, who, ActionPreferencesUpdate, resource)
	}
	return a.repo.UpdatePatient(ctx, who.Practice, id, func(cur *domain.Patient) (*domain.Patient, []domain.Event, error) {
		if cur.ChatOptIn == chatOptIn {
			return nil, nil, nil
		}
		next := *cur
		now := a.now().UTC().Truncate(time.Microsecond) // as stored
		next.ChatOptIn, next.PrefsUpdateTime = chatOptIn, now
		meta := events.Meta(who, ActionPreferencesUpdate, resource, now)
		meta.Detail = "chat_opt_in=" + strconv.FormatBool(chatOptIn)
		ev := domain.Event{ID: meta.GetId(), Subject: natsx.Tenant(natsx.SubjectPreferencesChanged, meta.GetPractice()),
			Msg: &preferencesv1.PreferencesChanged{Meta: meta, Preferences: PreferencesProto(&next)}}
		return &next, []domain.Event{ev}, nil
	})
}
