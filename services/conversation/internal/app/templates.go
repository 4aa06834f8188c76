package app

import (
	"context"
	"time"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/events"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// A template change is audited as an access record of the actor's action
// ("template.create", "template.update", "template.delete") on the
// template's name: nothing consumes template events but the audit log.
func (a *App) templateEvent(who auth.Identity, action string, at time.Time) func(domain.Template) []domain.Event {
	return func(t domain.Template) []domain.Event {
		return []domain.Event{ev(natsx.SubjectConversationAccess, &typev1.AccessRecorded{Meta: events.Meta(who, action, t.Name(), at)})}
	}
}

// admin authorizes a template change: practice_admin only, refusals recorded.
func (a *App) admin(ctx context.Context, action, resource string) (auth.Identity, error) {
	who, err := a.caller(ctx)
	if err != nil {
		return who, err
	}
	if who.Role != auth.RolePracticeAdmin {
		return who, a.denied(ctx, who, action, resource, domain.ErrAdminOnly)
	}
	return who, nil
}

func parseTemplateName(name string) (string, error) {
	p, ok := ids.Parse(name, "messageTemplates")
	if !ok {
		return "", domain.ErrTemplateName
	}
	return p[0], nil
}

// ListTemplates lists the practice's templates. Staff only.
func (a *App) ListTemplates(ctx context.Context) ([]domain.Template, error) {
	who, err := a.caller(ctx)
	if err != nil {
		return nil, err
	}
	if !who.IsStaff() {
		return nil, a.denied(ctx, who, "template.list", "messageTemplates", domain.ErrStaffOnly)
	}
	return a.repo.ListTemplates(ctx, who.Practice)
}

// CreateTemplate adds a template. practice_admin only.
func (a *App) CreateTemplate(ctx context.Context, title, text string) (domain.Template, error) {
	const action = "template.create"
	who, err := a.admin(ctx, action, "messageTemplates")
	if err != nil {
		return domain.Template{}, err
	}
	if err := domain.ValidateTitle(title); err != nil {
		return domain.Template{}, err
	}
	if err := domain.ValidateText(text); err != nil {
		return domain.Template{}, err
	}
	now := a.now().UTC().Truncate(time.Microsecond)
	t := domain.Template{Practice: who.Practice, ID: ids.New(), Title: title, Text: text, UpdateTime: now}
	return a.repo.CreateTemplate(ctx, t, a.templateEvent(who, action, now))
}

// UpdateTemplate changes a template's title and/or text (nil: unchanged).
// practice_admin only.
func (a *App) UpdateTemplate(ctx context.Context, name string, title, text *string) (domain.Template, error) {
	const action = "template.update"
	who, err := a.admin(ctx, action, name)
	if err != nil {
		return domain.Template{}, err
	}
	id, err := parseTemplateName(name)
	if err != nil {
		return domain.Template{}, err
	}
	if title != nil {
		if err := domain.ValidateTitle(*title); err != nil {
			return domain.Template{}, err
		}
	}
	if text != nil {
		if err := domain.ValidateText(*text); err != nil {
			return domain.Template{}, err
		}
	}
	now := a.now().UTC().Truncate(time.Microsecond)
	return a.repo.UpdateTemplate(ctx, who.Practice, id, title, text, now, a.templateEvent(who, action, now))
}

// DeleteTemplate removes a template. practice_admin only.
func (a *App) DeleteTemplate(ctx context.Context, name string) error {
	const action = "template.delete"
	who, err := a.admin(ctx, action, name)
	if err != nil {
		return err
	}
	id, err := parseTemplateName(name)
	if err != nil {
		return err
	}
	return a.repo.DeleteTemplate(ctx, who.Practice, id, a.templateEvent(who, action, a.now()))
}
