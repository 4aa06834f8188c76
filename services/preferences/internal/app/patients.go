package app

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/events"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/preferences/internal/domain"
)

// Limits of the directory and of search.
const (
	MaxDisplayNameRunes = 200
	DefaultPageSize     = 20
	MaxPageSize         = 100
	MaxQueryBytes       = 256
	MaxQueryWords       = 8
)

// earliestBirth is the earliest date of birth accepted.
var earliestBirth = time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC)

// UpsertInput is a directory entry from a practice system.
type UpsertInput struct {
	// ID, when set, names the patient (their portal subject).
	ID string
	// ExternalID is the practice management system's id (required).
	ExternalID       string
	DisplayName      string
	DateOfBirth      string
	HasPortalAccount bool
}

// validate reports every problem of in at once, without echoing values.
func (in *UpsertInput) validate(today time.Time) error {
	var problems []string
	if in.ID != "" && !ids.Valid(in.ID) {
		problems = append(problems, "patient.name must be patients/{patient} with 1 to 128 letters, digits, '-', '_' or '.'")
	}
	switch {
	case in.ExternalID == "":
		problems = append(problems, "patient.external_id is required")
	case !ids.Valid(in.ExternalID):
		problems = append(problems, "patient.external_id must be 1 to 128 letters, digits, '-', '_' or '.'")
	}
	name := in.DisplayName
	switch {
	case name == "":
		problems = append(problems, "patient.display_name is required")
	case !utf8.ValidString(name) || strings.IndexFunc(name, unicode.IsControl) >= 0:
		problems = append(problems, "patient.display_name must be text without control characters")
	case utf8.RuneCountInString(name) > MaxDisplayNameRunes:
		problems = append(problems, fmt.Sprintf("patient.display_name must be at most %d characters", MaxDisplayNameRunes))
	case len(domain.SplitName(name).Words) == 0:
		problems = append(problems, "patient.display_name must contain a letter or digit")
	}
	if in.DateOfBirth == "" {
		problems = append(problems, "patient.date_of_birth is required (YYYY-MM-DD)")
	} else if d, err := time.Parse(time.DateOnly, in.DateOfBirth); err != nil || d.Format(time.DateOnly) != in.DateOfBirth {
		problems = append(problems, "patient.date_of_birth must be a date YYYY-MM-DD")
	} else if d.Before(earliestBirth) || d.After(today.AddDate(0, 0, 1)) {
		problems = append(problems, "patient.date_of_birth must be between 1900-01-01 and today")
	}
	if len(problems) > 0 {
		return errs.InvalidArgument("Check the patient: %s", strings.Join(problems, "; "))
	}
	return nil
}

// UpsertPatient creates or updates a directory entry: by ID when given, else
// by ExternalID (a new patient then gets a fresh id). An upsert that changes
// nothing writes and publishes nothing. A new patient has not opted in to
// chat; an update keeps their opt-in. Callers: system and practice_admin.
func (a *App) UpsertPatient(ctx context.Context, in UpsertInput) (*domain.Patient, error) {
	p, _, err := a.UpsertPatientCreated(ctx, in)
	return p, err
}

// UpsertPatientCreated is UpsertPatient that also says whether the write
// created the patient (no earlier answer about them can exist).
func (a *App) UpsertPatientCreated(ctx context.Context, in UpsertInput) (_ *domain.Patient, created bool, _ error) {
	who, err := caller(ctx)
	if err != nil {
		return nil, false, err
	}
	if !who.IsSystem() && who.Role != auth.RolePracticeAdmin {
		return nil, false, a.deny(ctx, who, ActionPatientUpsert, "patients",
			errs.PermissionDenied("Only the practice management system or a practice admin can change the patient directory"))
	}
	in.DisplayName = strings.TrimSpace(in.DisplayName)
	if err := in.validate(a.now().UTC()); err != nil {
		return nil, false, err
	}
	key := domain.PatientKey{ID: in.ID, ExternalID: in.ExternalID}
	p, err := a.repo.UpsertPatient(ctx, who.Practice, key, func(cur *domain.Patient) (*domain.Patient, []domain.Event, error) {
		created = cur == nil // the last run's (a write may run again)
		next := domain.Patient{
			Practice:         who.Practice,
			ID:               in.ID,
			ExternalID:       in.ExternalID,
			DisplayName:      in.DisplayName,
			DateOfBirth:      in.DateOfBirth,
			HasPortalAccount: in.HasPortalAccount,
		}
		if cur != nil {
			if cur.SameDirectoryEntry(&next) {
				return nil, nil, nil
			}
			next.ID, next.ChatOptIn, next.PrefsUpdateTime = cur.ID, cur.ChatOptIn, cur.PrefsUpdateTime
		} else if next.ID == "" {
			next.ID = ids.New()
		}
		now := a.now().UTC().Truncate(time.Microsecond) // as stored
		next.UpdateTime = now
		meta := events.Meta(who, ActionPatientUpsert, PatientName(next.ID), now)
		ev := domain.Event{ID: meta.GetId(), Subject: natsx.Tenant(natsx.SubjectPatientUpserted, meta.GetPractice()),
			Msg: &preferencesv1.PatientUpserted{Meta: meta, Patient: PatientProto(&next)}}
		return &next, []domain.Event{ev}, nil
	})
	if err != nil {
		return nil, false, err
	}
	return p, created, nil
}

// GetPatient returns one patient of the caller's practice. Callers: staff and
// system, and the patient themself; another patient's entry answers
// NOT_FOUND and is recorded as a denied view.
func (a *App) GetPatient(ctx context.Context, id string) (*domain.Patient, error) {
	who, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := a.mayRead(ctx, who, id, ActionPatientView, PatientName(id)); err != nil {
		return nil, err
	}
	return a.repo.GetPatient(ctx, who.Practice, id)
}

// mayRead lets staff, system and the patient themself read patient id.
func (a *App) mayRead(ctx context.Context, who auth.Identity, id, action, resource string) error {
	switch {
	case who.IsStaff(), who.IsSystem():
		return nil
	case who.IsPatient() && who.Subject == id:
		return nil
	}
	return a.notFound(ctx, who, action, resource)
}

// SearchInput is a patient search.
type SearchInput struct {
	Query             string
	IncludeIneligible bool
	PageSize          int
	PageToken         string
}

// SearchPatients finds patients of the caller's practice by name (see
// domain.SearchQuery for matching and order), the chat-eligible only unless
// IncludeIneligible. It returns one page and the token of the next ("" at
// the end). Callers: staff and system.
func (a *App) SearchPatients(ctx context.Context, in SearchInput) ([]domain.SearchHit, string, error) {
	who, err := caller(ctx)
	if err != nil {
		return nil, "", err
	}
	if !who.IsStaff() && !who.IsSystem() {
		return nil, "", a.deny(ctx, who, ActionPatientSearch, "patients",
			errs.PermissionDenied("Only practice staff can search the patient directory"))
	}
	size := in.PageSize
	switch {
	case size < 0:
		return nil, "", errs.InvalidArgument("page_size must not be negative")
	case size == 0:
		size = DefaultPageSize
	case size > MaxPageSize:
		size = MaxPageSize
	}
	if len(in.Query) > MaxQueryBytes {
		return nil, "", errs.InvalidArgument("The search is too long: use at most %d characters", MaxQueryBytes)
	}
	words := domain.QueryWords(in.Query)
	if len(words) > MaxQueryWords {
		return nil, "", errs.InvalidArgument("Search with at most %d words", MaxQueryWords)
	}
	q := domain.SearchQuery{Practice: who.Practice, Words: words, IncludeIneligible: in.IncludeIneligible, Limit: size + 1}
	fp := fingerprint(words, in.IncludeIneligible)
	if in.PageToken != "" {
		c, err := decodeToken(in.PageToken, fp)
		if err != nil {
			return nil, "", err
		}
		q.After = c
	}
	hits, err := a.repo.SearchPatients(ctx, q)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(hits) > size {
		hits = hits[:size]
		last := hits[size-1]
		next = encodeToken(domain.Cursor{Tier: last.Tier, ID: last.Patient.ID}, fp)
	}
	return hits, next, nil
}

// Page tokens are "v1.<tier>.<id>.<fingerprint>" in unpadded base64url: the
// position after the last patient returned (never a name) and a fingerprint
// of the search, so a token is only good for the search that made it.
func fingerprint(words []string, includeIneligible bool) uint64 {
	h := sha256.New()
	for _, w := range words {
		h.Write([]byte(w))
		h.Write([]byte{0})
	}
	if includeIneligible {
		h.Write([]byte{1})
	}
	return binary.BigEndian.Uint64(h.Sum(nil))
}

func encodeToken(c domain.Cursor, fp uint64) string {
	raw := fmt.Sprintf("v1.%d.%s.%x", c.Tier, c.ID, fp)
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

func decodeToken(tok string, fp uint64) (*domain.Cursor, error) {
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return nil, domain.ErrBadPageToken
	}
	// ids may contain '.': the id is everything between tier and fingerprint.
	parts := strings.SplitN(string(raw), ".", 3)
	if len(parts) != 3 || parts[0] != "v1" {
		return nil, domain.ErrBadPageToken
	}
	dot := strings.LastIndexByte(parts[2], '.')
	if dot < 0 {
		return nil, domain.ErrBadPageToken
	}
	id, fpHex := parts[2][:dot], parts[2][dot+1:]
	tier, err := strconv.Atoi(parts[1])
	if err != nil || tier < 0 || tier > 2 || !ids.Valid(id) || fpHex != strconv.FormatUint(fp, 16) {
		return nil, domain.ErrBadPageToken
	}
	return &domain.Cursor{Tier: tier, ID: id}, nil
}
