package domain

import (
	"context"
	"errors"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// Checkpoint is a signed statement of a practice's log size and root hash.
type Checkpoint struct {
	Practice string
	Size     int64
	Root     tlog.Hash
	// Note is a signed note (golang.org/x/mod/sumdb/note) over CheckpointText.
	Note string
	Time time.Time // when it was signed
}

// StoredHash is one tlog stored hash (see tlog.StoredHashIndex).
type StoredHash struct {
	Index int64
	Hash  tlog.Hash
}

// Cursor is a position in a listing ordered by (time, index).
type Cursor struct {
	TimeMicros int64
	Index      int64
}

// ListQuery selects records of one practice.
type ListQuery struct {
	Practice  string
	Filter    Filter
	After     *Cursor // exclusive; nil: from the start
	Limit     int
	Ascending bool // oldest first; default newest first
}

// ErrMissingHash means a stored hash that the tree needs is not in storage
// (a HashReader's error wraps it).
var ErrMissingHash = errors.New("stored tree hash missing")

// Repository stores the practice logs. Implementations refuse to update or
// delete anything they stored (the storage itself enforces it).
type Repository interface {
	// Append appends e to its practice's log at the next index, with its leaf
	// and the tlog stored hashes, in one transaction. If an event with e's id
	// is already in the log, it returns that record and false, and changes
	// nothing.
	Append(ctx context.Context, e Entry) (Record, bool, error)
	// AppendAll appends each entry as Append does, in the order given, in
	// one transaction: all of them are committed or none. added[i] is false
	// for an entry whose id was already in the log (or earlier in es).
	AppendAll(ctx context.Context, es []Entry) (recs []Record, added []bool, err error)
	// Size is the number of records in the practice's log (its last index + 1).
	Size(ctx context.Context, practice string) (int64, error)
	// Sizes returns the size of every practice's log.
	Sizes(ctx context.Context) (map[string]int64, error)
	// List returns records matching q, ordered by (time, index).
	List(ctx context.Context, q ListQuery) ([]Record, error)
	// Range returns the stored records with from <= index < to, by index.
	Range(ctx context.Context, practice string, from, to int64) ([]Record, error)
	// LeafHashes returns the stored leaf hashes of the records with
	// from <= index < to, by index: what a witness is sent, without the
	// records themselves (a checkpoint a minute apart at 1,000 events/s
	// spans 60,000 records, ~40 MB read whole, ~2 MB as hashes).
	LeafHashes(ctx context.Context, practice string, from, to int64) ([]tlog.Hash, error)
	// StoredHashes returns the stored hashes with from <= index < to, by index.
	StoredHashes(ctx context.Context, practice string, from, to int64) ([]StoredHash, error)
	// StoredHashCount is the highest stored hash index + 1 (0 when none).
	StoredHashCount(ctx context.Context, practice string) (int64, error)
	// HashReader reads the practice's stored hashes, for proofs and roots.
	HashReader(ctx context.Context, practice string) tlog.HashReader
	// SaveCheckpoint stores c unless a checkpoint of that size exists, and
	// returns the stored one.
	SaveCheckpoint(ctx context.Context, c Checkpoint) (Checkpoint, error)
	// LatestCheckpoint returns the largest checkpoint of the practice.
	LatestCheckpoint(ctx context.Context, practice string) (Checkpoint, bool, error)
	// Checkpoints returns every checkpoint of the practice, smallest first.
	Checkpoints(ctx context.Context, practice string) ([]Checkpoint, error)
}
