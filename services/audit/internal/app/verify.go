package app

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// verifyPage is how many records verification reads at a time.
const verifyPage = 1024

// VerifyResult is the outcome of recomputing a practice's log.
type VerifyResult struct {
	Valid    bool
	Checked  int64     // records whose leaf and tree hashes were recomputed and matched
	TreeSize int64     // records in the log
	Root     tlog.Hash // the recomputed root (when valid)
	// When not valid: the first index that does not match, and why (no PHI).
	FirstBadIndex int64
	Reason        string
}

// Kept is a checkpoint the caller kept outside the system.
type Kept struct {
	Size int64
	Root tlog.Hash
	// Leaves, when known (a witness that keeps them), are the leaf hashes
	// of records 0… as they were: verify then names the first record whose
	// recomputed leaf differs, even after a consistent rewrite.
	Leaves []tlog.Hash
}

// ParseKept reads a kept checkpoint's size and base64 root hash; a zero size
// with an empty hash is no checkpoint (nil).
func ParseKept(size int64, root string) (*Kept, error) {
	root = strings.TrimSpace(root)
	switch {
	case size < 0:
		return nil, errs.InvalidArgument("checkpoint_tree_size must not be negative")
	case size == 0 && root == "":
		return nil, nil
	case root == "":
		return nil, errs.InvalidArgument("checkpoint_root_hash is required with checkpoint_tree_size")
	}
	var b []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		if b, err = enc.DecodeString(root); err == nil {
			break
		}
	}
	if err != nil || len(b) != tlog.HashSize {
		return nil, errs.InvalidArgument("checkpoint_root_hash must be a base64 SHA-256 hash (%d bytes)", tlog.HashSize)
	}
	k := &Kept{Size: size}
	copy(k.Root[:], b)
	return k, nil
}

// Verify recomputes the caller's practice's log from storage: every leaf hash
// from its record's fields, the whole tree from the leaves, and compares them
// with the stored leaf hashes, the stored tree hashes, every signed
// checkpoint (signature, size and root) and, when given, a checkpoint the
// caller kept (which is what detects a truncated tail when the attacker also
// removed the later hashes and checkpoints). It reports the first bad index.
func (a *App) Verify(ctx context.Context, kept *Kept) (VerifyResult, error) {
	who, err := authorize(ctx)
	if err != nil {
		return VerifyResult{}, err
	}
	if kept == nil {
		// Without a checkpoint of the caller's, what the witness saw.
		if kept, err = a.witnessKept(ctx, who.Practice); err != nil {
			return VerifyResult{}, err
		}
	}
	return a.verify(ctx, who.Practice, kept)
}

func (a *App) verify(ctx context.Context, practice string, kept *Kept) (VerifyResult, error) {
	// Checkpoints before the size, hash count before the final size: a
	// concurrent append must never look like a truncation.
	cps, err := a.repo.Checkpoints(ctx, practice)
	if err != nil {
		return VerifyResult{}, err
	}
	n, err := a.repo.Size(ctx, practice)
	if err != nil {
		return VerifyResult{}, err
	}
	v := &verifier{app: a, practice: practice, cps: cps, kept: kept, tree: domain.NewFrontier()}
	res := VerifyResult{TreeSize: n}
	bad := func(i int64, format string, args ...any) (VerifyResult, error) {
		res.FirstBadIndex, res.Reason = i, fmt.Sprintf(format, args...)
		res.Checked = min(v.tree.Size(), i)
		return res, nil
	}
	if i, why := v.atSize(); why != "" {
		return bad(i, "%s", why)
	}
	for from := int64(0); from < n; from += verifyPage {
		to := min(from+verifyPage, n)
		recs, err := a.repo.Range(ctx, practice, from, to)
		if err != nil {
			return VerifyResult{}, err
		}
		hashes, err := a.repo.StoredHashes(ctx, practice, tlog.StoredHashCount(from), tlog.StoredHashCount(to))
		if err != nil {
			return VerifyResult{}, err
		}
		ri, hi := 0, 0
		for i := from; i < to; i++ {
			if ri >= len(recs) || recs[ri].Index != i {
				return bad(i, "record %d is missing", i)
			}
			r := recs[ri]
			ri++
			leaf := r.LeafHash()
			if leaf != r.Hash {
				return bad(i, "record %d does not match its leaf hash: its fields were changed", i)
			}
			if kept != nil && i < int64(len(kept.Leaves)) && kept.Leaves[i] != leaf {
				return bad(i, "record %d differs from what the witness saw: it was rewritten", i)
			}
			created, err := v.tree.Add(leaf)
			if err != nil {
				return VerifyResult{}, err
			}
			for j, h := range created {
				x := tlog.StoredHashIndex(0, i) + int64(j)
				if hi >= len(hashes) || hashes[hi].Index != x {
					return bad(i, "the tree hashes of record %d are missing", i)
				}
				if hashes[hi].Hash != h {
					return bad(i, "the stored tree hashes do not match record %d", i)
				}
				hi++
			}
			if i, why := v.atSize(); why != "" {
				return bad(i, "%s", why)
			}
		}
	}
	if v.cpi < len(cps) {
		return bad(n, "the log has %d records but a signed checkpoint has %d: records were removed from the end", n, cps[v.cpi].Size)
	}
	if kept != nil && kept.Size > n {
		return bad(n, "the log has %d records but the kept checkpoint has %d: records were removed from the end", n, kept.Size)
	}
	hashCount, err := a.repo.StoredHashCount(ctx, practice)
	if err != nil {
		return VerifyResult{}, err
	}
	n2, err := a.repo.Size(ctx, practice)
	if err != nil {
		return VerifyResult{}, err
	}
	if hashCount > tlog.StoredHashCount(n2) {
		return bad(min(n, n2), "tree hashes go beyond the last record: records were removed from the end")
	}
	res.Valid, res.Checked = true, n
	if res.Root, err = v.tree.Root(); err != nil {
		return VerifyResult{}, err
	}
	return res, nil
}

// verifier compares the tree being rebuilt with the checkpoints as it
// reaches their sizes.
type verifier struct {
	app      *App
	practice string
	cps      []domain.Checkpoint // by size
	cpi      int                 // next checkpoint to compare
	kept     *Kept
	tree     *domain.Frontier
	lastGood int64 // size of the largest checkpoint matched so far
}

// atSize compares every checkpoint of the tree's current size. On a mismatch
// it returns the first index the checkpoints no longer vouch for and why.
func (v *verifier) atSize() (int64, string) {
	size := v.tree.Size()
	// The kept checkpoint first: it is the operator's anchor, and the stored
	// ones of the same size must not vouch for the range it disputes.
	if v.kept != nil && v.kept.Size == size {
		if why := v.compare(v.kept.Root, "kept checkpoint"); why != "" {
			return v.lastGood, why
		}
	}
	for v.cpi < len(v.cps) && v.cps[v.cpi].Size <= size {
		c := v.cps[v.cpi]
		v.cpi++
		if c.Size < size {
			continue // cannot happen: sizes are unique and visited in order
		}
		if err := v.app.openCheckpoint(c); err != nil {
			return v.lastGood, fmt.Sprintf("the checkpoint of size %d is not genuine: %v", c.Size, err)
		}
		if why := v.compare(c.Root, "signed checkpoint"); why != "" {
			return v.lastGood, why
		}
	}
	return 0, ""
}

func (v *verifier) compare(root tlog.Hash, what string) string {
	size := v.tree.Size()
	got, err := v.tree.Root()
	if err != nil || got != root {
		if size == 0 {
			return fmt.Sprintf("the %s of size 0 has a wrong root hash", what)
		}
		return fmt.Sprintf("records %d to %d do not match the %s of size %d", v.lastGood, size-1, what, size)
	}
	v.lastGood = size
	return ""
}
