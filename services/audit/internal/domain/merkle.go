package domain

import (
	"fmt"
	"net/url"
	"strings"

	"golang.org/x/mod/sumdb/tlog"
)

// CheckpointText is the text a checkpoint note signs: tlog's tree format
// (size and base64 root hash) followed by the practice, so a checkpoint of one
// practice never passes for another's:
//
//	go.sum database tree
//	42
//	nND/nri/U0xuHUrYSy0HtMeal2vzD9V4k/BO79C+QeI=
//	practice demo
func CheckpointText(practice string, size int64, root tlog.Hash) string {
	return string(tlog.FormatTree(tlog.Tree{N: size, Hash: root})) + "practice " + url.PathEscape(practice) + "\n"
}

// ParseCheckpointText is the inverse of CheckpointText.
func ParseCheckpointText(text string) (practice string, tree tlog.Tree, err error) {
	tree, err = tlog.ParseTree([]byte(text))
	if err != nil {
		return "", tlog.Tree{}, err
	}
	lines := strings.Split(text, "\n")
	if len(lines) != 5 || lines[4] != "" || !strings.HasPrefix(lines[3], "practice ") {
		return "", tlog.Tree{}, fmt.Errorf("checkpoint text: no practice line")
	}
	practice, err = url.PathUnescape(strings.TrimPrefix(lines[3], "practice "))
	if err != nil {
		return "", tlog.Tree{}, fmt.Errorf("checkpoint text: %w", err)
	}
	return practice, tree, nil
}

// Frontier rebuilds a tree from its leaves in order while keeping only the
// stored hashes later leaves and the current root need (O(log n) of them).
// Verification streams a whole log through it.
type Frontier struct {
	n      int64
	hashes map[int64]tlog.Hash
}

// NewFrontier returns an empty tree.
func NewFrontier() *Frontier { return &Frontier{hashes: map[int64]tlog.Hash{}} }

// Size is the number of leaves added.
func (f *Frontier) Size() int64 { return f.n }

// Add appends a leaf hash and returns the stored hashes it creates, in stored
// hash index order starting at tlog.StoredHashCount(previous size).
func (f *Frontier) Add(leaf tlog.Hash) ([]tlog.Hash, error) {
	n := f.n
	hs, err := tlog.StoredHashesForRecordHash(n, leaf, f)
	if err != nil {
		return nil, err
	}
	for level, h := range hs {
		f.hashes[tlog.StoredHashIndex(level, n>>uint(level))] = h
		if level > 0 {
			// Both children are now covered by their parent.
			k := n >> uint(level)
			delete(f.hashes, tlog.StoredHashIndex(level-1, 2*k))
			delete(f.hashes, tlog.StoredHashIndex(level-1, 2*k+1))
		}
	}
	f.n++
	return hs, nil
}

// Root is the root hash of the leaves added so far.
func (f *Frontier) Root() (tlog.Hash, error) { return tlog.TreeHash(f.n, f) }

// ReadHashes implements tlog.HashReader over the kept hashes.
func (f *Frontier) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		h, ok := f.hashes[x]
		if !ok {
			return nil, fmt.Errorf("frontier: stored hash %d not kept", x)
		}
		out[i] = h
	}
	return out, nil
}
