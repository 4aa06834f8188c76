// Package app holds the audit service's use cases: appending published events
// to the practice logs, listing and exporting them for a practice
// administrator, signing checkpoints, proofs, and verification.
package app

import (
	"context"
	"golang.org/x/mod/sumdb/note"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
	"github.com/clinicchat/clinicchat/services/audit/internal/signer"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// Log field keys of this service (ids and counts only).
const (
	keyIndex    = "index"
	keyTreeSize = "tree_size"
	keyAction   = "action"
)

// ErrNotAdmin refuses everyone but a practice administrator.
var ErrNotAdmin = errs.PermissionDenied("Only a practice administrator may read the audit log")

// App is the audit service's use cases.
type App struct {
	repo domain.Repository
	key  *signer.Key
	log  *zap.Logger
	now  func() time.Time

	mu    sync.Mutex
	dirty map[string]struct{} // practices appended to since their last checkpoint
	// pending holds, per practice whose log has records no checkpoint
	// covers yet, when this process first saw such a record (CheckpointAge).
	pending map[string]time.Time

	witness  Witness         // nil: none
	previous []note.Verifier // earlier signing keys
	health   healthState
}

// New returns the use cases over repo, signing checkpoints with key.
func New(repo domain.Repository, key *signer.Key, log *zap.Logger) *App {
	return &App{repo: repo, key: key, log: log, now: time.Now, dirty: map[string]struct{}{}, pending: map[string]time.Time{}}
}

// authorize admits the practice administrator of a practice; reads of the
// audit log are not themselves audited.
func authorize(ctx context.Context) (auth.Identity, error) {
	who, ok := auth.FromContext(ctx)
	if !ok {
		return auth.Identity{}, errs.Unauthenticated("Sign in again: the request carries no bearer token")
	}
	if who.Role != auth.RolePracticeAdmin || who.Practice == "" {
		return auth.Identity{}, ErrNotAdmin
	}
	return who, nil
}

// Ingest appends the event that arrived on subject, unless the audit policy
// says it is not an action (domain.Audited) or its id is already in the log.
// It returns once the record is committed.
func (a *App) Ingest(ctx context.Context, subject string, e domain.Entry) error {
	return a.IngestAll(ctx, []Arrival{{Subject: subject, Entry: e}})
}

// Arrival is an event as it arrived: its subject and its audit entry.
type Arrival struct {
	Subject string
	Entry   domain.Entry
}

// IngestAll is Ingest for a batch of events in one transaction (one durable
// commit), appended in the order given. It returns once all are committed;
// on an error none is.
func (a *App) IngestAll(ctx context.Context, in []Arrival) error {
	entries := make([]domain.Entry, 0, len(in))
	for _, x := range in {
		if ok, why := domain.Audited(natsx.Kind(x.Subject), x.Entry); !ok {
			if ce := a.log.Check(zap.DebugLevel, "event not audited"); ce != nil {
				ce.Write(zap.String(logkeys.EventID, x.Entry.EventID), zap.String(keyAction, x.Entry.Action), zap.String("why", why))
			}
			continue
		}
		entries = append(entries, x.Entry)
	}
	if len(entries) == 0 {
		return nil
	}
	recs, added, err := a.repo.AppendAll(ctx, entries)
	if err != nil {
		return err
	}
	for i, rec := range recs {
		msg := "audit record appended"
		if added[i] {
			a.markDirty(rec.Practice)
		} else {
			msg = "duplicate event ignored"
		}
		// Check first: building the fields of a disabled level still allocates.
		if ce := a.log.Check(zap.DebugLevel, msg); ce != nil {
			ce.Write(zap.String(logkeys.EventID, entries[i].EventID), zap.String(logkeys.Practice, rec.Practice), zap.Int64(keyIndex, rec.Index))
		}
	}
	return nil
}

func (a *App) markDirty(practice string) {
	a.mu.Lock()
	a.dirty[practice] = struct{}{}
	if _, ok := a.pending[practice]; !ok {
		a.pending[practice] = a.now()
	}
	a.mu.Unlock()
}

// signed notes that practice's log was covered by a checkpoint signed at
// time at: unless records arrived meanwhile, nothing of it is pending.
func (a *App) signed(practice string, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, again := a.dirty[practice]; again {
		a.pending[practice] = at // grew while signing: pending since about then
		return
	}
	delete(a.pending, practice)
}

// CheckpointAge is how long the oldest record that no signed checkpoint
// covers has waited (since this process saw it; records found at start-up
// count from then): 0 when every log is covered. Checkpoints are signed
// every CheckpointInterval, so it stays below that unless signing fails.
func (a *App) CheckpointAge() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	var oldest time.Time
	for _, t := range a.pending {
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	if oldest.IsZero() {
		return 0
	}
	return max(a.now().Sub(oldest), 0)
}

func (a *App) takeDirty() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(a.dirty))
	for p := range a.dirty {
		out = append(out, p)
	}
	clear(a.dirty)
	return out
}
