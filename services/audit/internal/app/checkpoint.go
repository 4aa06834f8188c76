package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
)

// ReasonLogInconsistent: the stored tree no longer extends the last signed
// checkpoint, so the service refuses to sign a new one.
const ReasonLogInconsistent = "AUDIT_LOG_INCONSISTENT"

var errInconsistent = errs.FailedPrecondition(ReasonLogInconsistent,
	"The audit log does not extend its last signed checkpoint; run verify to find the first bad record")

// Checkpoint returns the latest signed checkpoint of the caller's practice,
// first signing and saving one for the current tree when it grew since.
func (a *App) Checkpoint(ctx context.Context) (domain.Checkpoint, error) {
	who, err := authorize(ctx)
	if err != nil {
		return domain.Checkpoint{}, err
	}
	return a.checkpoint(ctx, who.Practice)
}

// checkpoint signs and saves a checkpoint of practice's current tree unless
// the latest one covers it. A new checkpoint must extend the previous one
// (a consistency proof from the stored hashes), so a rewritten history is
// never signed.
func (a *App) checkpoint(ctx context.Context, practice string) (domain.Checkpoint, error) {
	latest, ok, err := a.repo.LatestCheckpoint(ctx, practice)
	if err != nil {
		return domain.Checkpoint{}, err
	}
	size, err := a.repo.Size(ctx, practice)
	if err != nil {
		return domain.Checkpoint{}, err
	}
	if ok && latest.Size >= size {
		return latest, nil
	}
	r := a.repo.HashReader(ctx, practice)
	root, err := tlog.TreeHash(size, r)
	if err != nil {
		return domain.Checkpoint{}, fmt.Errorf("tree hash of %d: %w", size, err)
	}
	if ok && latest.Size > 0 {
		proof, err := tlog.ProveTree(size, latest.Size, r)
		if err != nil {
			return domain.Checkpoint{}, fmt.Errorf("consistency proof %d→%d: %w", latest.Size, size, err)
		}
		if err := tlog.CheckTree(proof, size, root, latest.Size, latest.Root); err != nil {
			a.log.Error("audit log does not extend its last checkpoint; not signing", zap.String(logkeys.Practice, practice),
				zap.Int64(keyTreeSize, latest.Size))
			return domain.Checkpoint{}, errInconsistent
		}
	}
	msg, err := note.Sign(&note.Note{Text: domain.CheckpointText(practice, size, root)}, a.key.Signer)
	if err != nil {
		return domain.Checkpoint{}, fmt.Errorf("sign checkpoint: %w", err)
	}
	cp, err := a.repo.SaveCheckpoint(ctx, domain.Checkpoint{Practice: practice, Size: size, Root: root, Note: string(msg), Time: a.now().UTC()})
	if err != nil {
		return domain.Checkpoint{}, err
	}
	a.log.Debug("checkpoint signed", zap.String(logkeys.Practice, practice), zap.Int64(keyTreeSize, size))
	from := int64(0)
	if ok {
		from = latest.Size
	}
	a.postWitness(ctx, cp, from)
	return cp, nil
}

// openCheckpoint checks a stored checkpoint's signature and that the signed
// text says what its columns say.
func (a *App) openCheckpoint(c domain.Checkpoint) error {
	n, err := note.Open([]byte(c.Note), a.verifiers())
	if err != nil {
		var unknown *note.UnknownVerifierError
		if errors.As(err, &unknown) {
			return errors.New("signed by an unknown key")
		}
		return errors.New("its signature does not verify")
	}
	practice, tree, err := domain.ParseCheckpointText(n.Text)
	if err != nil {
		return errors.New("its signed text is malformed")
	}
	if practice != c.Practice || tree.N != c.Size || tree.Hash != c.Root {
		return errors.New("its signed text does not match its stored size and root")
	}
	return nil
}

// RunCheckpoints signs a checkpoint of every practice log that grew, every
// interval, until ctx ends; then once more for what grew meanwhile.
func (a *App) RunCheckpoints(ctx context.Context, interval time.Duration) error {
	if err := a.markUncheckpointed(ctx); err != nil && ctx.Err() == nil {
		a.log.Warn("finding logs without a current checkpoint", zap.Error(err))
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			final, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			a.checkpointDirty(final)
			cancel()
			return nil
		case <-t.C:
			a.checkpointDirty(ctx)
		}
	}
}

// markUncheckpointed marks every practice whose log is larger than its latest
// checkpoint (say, after a restart).
func (a *App) markUncheckpointed(ctx context.Context) error {
	sizes, err := a.repo.Sizes(ctx)
	if err != nil {
		return err
	}
	for p, n := range sizes {
		latest, ok, err := a.repo.LatestCheckpoint(ctx, p)
		if err != nil {
			return err
		}
		if !ok || latest.Size < n {
			a.markDirty(p)
		}
	}
	return nil
}

func (a *App) checkpointDirty(ctx context.Context) {
	for _, p := range a.takeDirty() {
		at := a.now()
		if _, err := a.checkpoint(ctx, p); err != nil {
			if !errors.Is(err, errInconsistent) {
				a.markDirty(p) // try again next time
			}
			a.log.Warn("checkpoint not signed", zap.String(logkeys.Practice, p), zap.Error(err))
			continue
		}
		a.signed(p, at)
	}
}
