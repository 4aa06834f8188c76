package app

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"

	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
	"github.com/clinicchat/clinicchat/services/audit/internal/witness"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
)

// Witness keeps the signed checkpoints outside this host (witness.File,
// witness.HTTP).
type Witness interface {
	Post(ctx context.Context, c witness.Checkpoint) error
	Latest(ctx context.Context) (map[string]witness.Checkpoint, error)
}

// SetWitness makes every new checkpoint go to w, and CheckLogs compare the
// logs with what w last saw.
func (a *App) SetWitness(w Witness) { a.witness = w }

// SetPreviousVerifiers keeps earlier signing keys' verifiers, so
// checkpoints signed before a key rotation still verify.
func (a *App) SetPreviousVerifiers(vs []note.Verifier) { a.previous = vs }

func (a *App) verifiers() note.Verifiers {
	return note.VerifierList(append([]note.Verifier{a.key.Verifier}, a.previous...)...)
}

func (a *App) postWitness(ctx context.Context, cp domain.Checkpoint, from int64) {
	if a.witness == nil {
		return
	}
	c := witness.New(cp.Practice, cp.Size, cp.Root, cp.Note)
	// Only the leaf hashes: the records themselves are not sent, and a
	// minute's records held at once were the all-in-one's largest memory
	// spike at a steady rate (BENCHMARKS.md, mem14).
	leaves, err := a.repo.LeafHashes(ctx, cp.Practice, from, cp.Size)
	if err == nil && int64(len(leaves)) == cp.Size-from {
		c = c.WithLeaves(from, leaves)
	}
	if err := a.witness.Post(ctx, c); err != nil {
		a.log.Warn("checkpoint not sent to the witness", zap.String(logkeys.Practice, cp.Practice), zap.Int64(keyTreeSize, cp.Size), zap.Error(err))
	}
}

// Health is the outcome of the last CheckLogs.
type Health struct {
	// Problems by practice (ids and indexes only, no PHI); empty when every
	// log verified.
	Problems map[string]string
	Checked  time.Time
	Err      error // the check itself could not run (witness unreachable…)
}

// OK reports whether every log verified.
func (h Health) OK() bool { return len(h.Problems) == 0 && h.Err == nil }

// Summary is a one-line description for logs and readiness detail.
func (h Health) Summary() string {
	if h.Err != nil {
		return "audit log check failed: " + h.Err.Error()
	}
	if len(h.Problems) == 0 {
		return "every audit log verifies"
	}
	ps := make([]string, 0, len(h.Problems))
	for p := range h.Problems {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return fmt.Sprintf("audit log of practice %s: %s", ps[0], h.Problems[ps[0]])
}

type healthState struct {
	mu sync.Mutex
	h  Health
}

// LastHealth returns the outcome of the last CheckLogs.
func (a *App) LastHealth() Health {
	a.health.mu.Lock()
	defer a.health.mu.Unlock()
	return a.health.h
}

// CheckLogs verifies every practice's log — its records, stored hashes and
// signed checkpoints — and that it still extends the checkpoint the
// witness last saw (which catches a rewrite re-signed with the key, and a
// truncation of rows, hashes and checkpoints together).
func (a *App) CheckLogs(ctx context.Context) Health {
	h := Health{Problems: map[string]string{}, Checked: a.now().UTC()}
	defer func() {
		a.health.mu.Lock()
		a.health.h = h
		a.health.mu.Unlock()
	}()
	sizes, err := a.repo.Sizes(ctx)
	if err != nil {
		h.Err = err
		return h
	}
	seen := map[string]witness.Checkpoint{}
	if a.witness != nil {
		if seen, err = a.witness.Latest(ctx); err != nil {
			h.Err = err
			return h
		}
	}
	practices := map[string]bool{}
	for p := range sizes {
		practices[p] = true
	}
	for p := range seen {
		practices[p] = true
	}
	for p := range practices {
		var kept *Kept
		if c, ok := seen[p]; ok {
			root, err := c.Root()
			if err != nil {
				h.Problems[p] = "the witness's checkpoint is malformed"
				continue
			}
			kept = &Kept{Size: c.TreeSize, Root: root, Leaves: c.AllLeaves}
		}
		res, err := a.verify(ctx, p, kept)
		if err != nil {
			h.Err = err
			return h
		}
		if !res.Valid {
			h.Problems[p] = fmt.Sprintf("first bad record %d: %s", res.FirstBadIndex, res.Reason)
			a.log.Error("audit log does not verify", zap.String(logkeys.Practice, p), zap.Int64("first_bad_index", res.FirstBadIndex),
				zap.String("reason", res.Reason))
		}
	}
	return h
}

// RunChecks runs CheckLogs every interval until ctx ends; after is called
// with each outcome.
func (a *App) RunChecks(ctx context.Context, interval time.Duration, after func(Health)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			after(a.CheckLogs(ctx))
		}
	}
}

// witnessKept is what the witness last saw of practice, for Verify.
func (a *App) witnessKept(ctx context.Context, practice string) (*Kept, error) {
	if a.witness == nil {
		return nil, nil
	}
	seen, err := a.witness.Latest(ctx)
	if err != nil {
		return nil, err
	}
	c, ok := seen[practice]
	if !ok {
		return nil, nil
	}
	root, err := c.Root()
	if err != nil {
		return nil, err
	}
	return &Kept{Size: c.TreeSize, Root: root, Leaves: c.AllLeaves}, nil
}
