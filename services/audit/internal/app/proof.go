package app

import (
	"context"
	"fmt"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// InclusionProof proves that the record at index is in the caller's
// practice's tree of size treeSize (0: the current size). It returns the
// proof and the size used.
func (a *App) InclusionProof(ctx context.Context, index, treeSize int64) (tlog.RecordProof, int64, error) {
	who, err := authorize(ctx)
	if err != nil {
		return nil, 0, err
	}
	n, err := a.repo.Size(ctx, who.Practice)
	if err != nil {
		return nil, 0, err
	}
	if treeSize == 0 {
		treeSize = n
	}
	switch {
	case treeSize < 0 || treeSize > n:
		return nil, 0, errs.InvalidArgument("tree_size must be between 1 and the log's size, %d", n)
	case index < 0 || index >= treeSize:
		return nil, 0, errs.InvalidArgument("index must be between 0 and tree_size - 1 (%d)", treeSize-1)
	}
	p, err := tlog.ProveRecord(treeSize, index, a.repo.HashReader(ctx, who.Practice))
	if err != nil {
		return nil, 0, fmt.Errorf("inclusion proof: %w", err)
	}
	return p, treeSize, nil
}

// ConsistencyProof proves that the caller's practice's tree of size from is a
// prefix of the tree of size to (0: the current size).
func (a *App) ConsistencyProof(ctx context.Context, from, to int64) (tlog.TreeProof, error) {
	who, err := authorize(ctx)
	if err != nil {
		return nil, err
	}
	n, err := a.repo.Size(ctx, who.Practice)
	if err != nil {
		return nil, err
	}
	if to == 0 {
		to = n
	}
	switch {
	case to < 1 || to > n:
		return nil, errs.InvalidArgument("to_tree_size must be between 1 and the log's size, %d", n)
	case from < 1 || from > to:
		return nil, errs.InvalidArgument("from_tree_size must be between 1 and to_tree_size (%d)", to)
	}
	p, err := tlog.ProveTree(to, from, a.repo.HashReader(ctx, who.Practice))
	if err != nil {
		return nil, fmt.Errorf("consistency proof: %w", err)
	}
	return p, nil
}
