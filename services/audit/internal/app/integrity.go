package app

import (
	"context"
	"errors"
	"slices"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
)

// Integrity is a listed record's verdict.
type Integrity int

// Verdicts of a listed record.
const (
	// IntegrityUnverified: its fields hash to its leaf and to the tree's
	// stored leaf, but no genuine signed checkpoint covers it yet.
	IntegrityUnverified Integrity = iota
	// IntegrityVerified: its fields hash to its leaf, which an inclusion
	// proof from the stored tree places in the latest signed checkpoint.
	IntegrityVerified
	// IntegrityTampered: its fields no longer hash to its leaf, or the leaf
	// is not where the signed tree (or, past the checkpoint, the stored
	// tree) has it.
	IntegrityTampered
)

// hashReadBatch bounds the indexes of one stored-hash query.
const hashReadBatch = 500

// integrity judges each record of a page (at most MaxPageSize). The work is
// bounded by the page: one checkpoint read and signature check, and the
// stored hashes of the records' inclusion proofs — at most 2·log2(size) per
// record, shared between neighbours — read in batches of hashReadBatch.
func (a *App) integrity(ctx context.Context, practice string, recs []domain.Record) ([]Integrity, error) {
	out := make([]Integrity, len(recs))
	if len(recs) == 0 {
		return out, nil
	}
	var signed *domain.Checkpoint
	cp, ok, err := a.repo.LatestCheckpoint(ctx, practice)
	if err != nil {
		return nil, err
	}
	if ok && a.openCheckpoint(cp) == nil {
		signed = &cp
	}
	covered := func(r domain.Record) bool { return signed != nil && r.Index < signed.Size }

	// The stored hashes every proof needs (and each record's stored leaf).
	rec := &recordingReader{}
	for _, r := range recs {
		rec.want = append(rec.want, tlog.StoredHashIndex(0, r.Index))
		if covered(r) {
			if _, err := tlog.ProveRecord(signed.Size, r.Index, rec); err != nil {
				return nil, err
			}
		}
	}
	slices.Sort(rec.want)
	have, err := a.readHashes(ctx, practice, slices.Compact(rec.want))
	if err != nil {
		return nil, err
	}
	reader := mapReader(have)
	for i, r := range recs {
		leaf := r.LeafHash()
		stored, ok := have[tlog.StoredHashIndex(0, r.Index)]
		switch {
		case leaf != r.Hash || !ok || stored != leaf:
			out[i] = IntegrityTampered
		case !covered(r):
			out[i] = IntegrityUnverified
		default:
			proof, err := tlog.ProveRecord(signed.Size, r.Index, reader)
			if err == nil {
				err = tlog.CheckRecord(proof, signed.Size, signed.Root, r.Index, leaf)
			}
			if err != nil {
				out[i] = IntegrityTampered
			} else {
				out[i] = IntegrityVerified
			}
		}
	}
	return out, nil
}

// readHashes reads the stored hashes at indexes (sorted, unique); a missing
// one is left out of the map. A batch with a missing hash is read again one
// index at a time, which only a tampered log ever needs.
func (a *App) readHashes(ctx context.Context, practice string, indexes []int64) (map[int64]tlog.Hash, error) {
	r := a.repo.HashReader(ctx, practice)
	have := make(map[int64]tlog.Hash, len(indexes))
	for batch := range slices.Chunk(indexes, hashReadBatch) {
		hs, err := r.ReadHashes(batch)
		if err == nil {
			for j, x := range batch {
				have[x] = hs[j]
			}
			continue
		}
		if !errors.Is(err, domain.ErrMissingHash) {
			return nil, err
		}
		for _, x := range batch {
			h, err := r.ReadHashes([]int64{x})
			switch {
			case err == nil:
				have[x] = h[0]
			case !errors.Is(err, domain.ErrMissingHash):
				return nil, err
			}
		}
	}
	return have, nil
}

// recordingReader notes which stored hashes a proof reads (the indexes
// depend only on the sizes, never on the hashes) and answers zeros.
type recordingReader struct{ want []int64 }

func (r *recordingReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	r.want = append(r.want, indexes...)
	return make([]tlog.Hash, len(indexes)), nil
}

// mapReader answers from hashes read before.
type mapReader map[int64]tlog.Hash

func (m mapReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		h, ok := m[x]
		if !ok {
			return nil, domain.ErrMissingHash
		}
		out[i] = h
	}
	return out, nil
}
