package domain

import (
	"context"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// Template limits.
const (
	MaxTemplateTitle        = 100   // characters
	MaxTemplateText         = 2_000 // characters
	MaxTemplatesPerPractice = 200
)

// Placeholders are the only {…} a template's text may hold.
var Placeholders = []string{"{patient.firstName}", "{patient.displayName}", "{staff.displayName}", "{practice.name}"}

// Template is one of a practice's reply templates.
type Template struct {
	Practice   string
	ID         string
	Title      string
	Text       string
	UpdateTime time.Time
}

// Name is the resource name.
func (t Template) Name() string { return "messageTemplates/" + t.ID }

// TemplateRepository stores templates; every method is scoped by practice and
// writes evs in the same transaction as the change.
type TemplateRepository interface {
	// ListTemplates lists the practice's templates by title, then id.
	ListTemplates(ctx context.Context, practice string) ([]Template, error)
	// CreateTemplate inserts t unless the practice has MaxTemplatesPerPractice.
	CreateTemplate(ctx context.Context, t Template, evs func(Template) []Event) (Template, error)
	// UpdateTemplate changes title and/or text (nil: unchanged). ErrTemplateNotFound when absent.
	UpdateTemplate(ctx context.Context, practice, id string, title, text *string, at time.Time, evs func(Template) []Event) (Template, error)
	// DeleteTemplate removes it. ErrTemplateNotFound when absent.
	DeleteTemplate(ctx context.Context, practice, id string, evs func(Template) []Event) error
}

// Template errors.
var (
	ErrTemplateNotFound = errs.NotFound("Template not found")
	ErrTemplateName     = errs.InvalidArgument("Template name must look like messageTemplates/{template}")
	ErrTooManyTemplates = errs.FailedPrecondition("TOO_MANY_TEMPLATES", "A practice can keep at most 200 templates; remove one first")
	ErrAdminOnly        = errs.PermissionDenied("Only a practice admin can change templates")
)

var placeholderRe = regexp.MustCompile(`\{[^{}]*\}`)

// ValidateTitle checks a template title.
func ValidateTitle(title string) error {
	if strings.TrimSpace(title) == "" {
		return errs.InvalidArgument("title is required")
	}
	if utf8.RuneCountInString(title) > MaxTemplateTitle {
		return errs.InvalidArgument("title may be at most %d characters", MaxTemplateTitle)
	}
	return nil
}

// ValidateText checks a template text: not empty, at most MaxTemplateText
// characters, and only the known placeholders (an unknown one is named).
func ValidateText(text string) error {
	if strings.TrimSpace(text) == "" {
		return errs.InvalidArgument("text is required")
	}
	if utf8.RuneCountInString(text) > MaxTemplateText {
		return errs.InvalidArgument("text may be at most %d characters", MaxTemplateText)
	}
	for _, p := range placeholderRe.FindAllString(text, -1) {
		known := false
		for _, k := range Placeholders {
			known = known || p == k
		}
		if !known {
			if utf8.RuneCountInString(p) > 60 {
				p = string([]rune(p)[:60]) + "…"
			}
			return errs.InvalidArgument("Unknown placeholder %s; use %s", p, strings.Join(Placeholders, ", "))
		}
	}
	return nil
}
