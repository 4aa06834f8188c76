// Package witness keeps copies of the audit log's signed checkpoints
// outside the audit service's host: an HTTP endpoint run by someone else,
// or (in the all-in-one) a file away from the data dir. At start-up the
// service checks that its log still extends what the witness last saw, so
// a rewrite or a truncation is caught even by someone who holds the
// signing key.
package witness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// Checkpoint is what a witness keeps: a practice's log size and root hash,
// with the signed note that states them.
type Checkpoint struct {
	Practice string `json:"practice"`
	TreeSize int64  `json:"treeSize"`
	RootHash string `json:"rootHash"` // base64
	Note     string `json:"note"`
	// LeavesFrom and Leaves: the leaf hashes (base64) of records
	// LeavesFrom… TreeSize-1, the ones added since the previous checkpoint.
	// Hashes only, no content. With them verify names the first record that
	// differs from what the witness saw, not only a range.
	LeavesFrom int64    `json:"leavesFrom,omitempty"`
	Leaves     []string `json:"leaves,omitempty"`
	// AllLeaves is filled by Latest: every leaf the witness holds from
	// record 0 on, without a gap.
	AllLeaves []tlog.Hash `json:"-"`
}

// LeafHashes decodes Leaves.
func (c Checkpoint) LeafHashes() ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(c.Leaves))
	for i, l := range c.Leaves {
		b, err := base64.StdEncoding.DecodeString(l)
		if err != nil || len(b) != tlog.HashSize {
			return nil, errors.New("witness: bad leaf hash")
		}
		copy(out[i][:], b)
	}
	return out, nil
}

// WithLeaves adds the leaf hashes of records from… to c.
func (c Checkpoint) WithLeaves(from int64, leaves []tlog.Hash) Checkpoint {
	c.LeavesFrom = from
	c.Leaves = make([]string, len(leaves))
	for i, h := range leaves {
		c.Leaves[i] = base64.StdEncoding.EncodeToString(h[:])
	}
	return c
}

// merge keeps the largest checkpoint of each practice and appends c's
// leaves to the practice's gapless leaf list.
func merge(out map[string]Checkpoint, c Checkpoint) {
	prev := out[c.Practice]
	all := prev.AllLeaves
	if hs, err := c.LeafHashes(); err == nil && c.LeavesFrom <= int64(len(all)) && c.LeavesFrom+int64(len(hs)) > int64(len(all)) {
		all = append(all[:c.LeavesFrom:c.LeavesFrom], hs...)
	}
	if c.TreeSize >= prev.TreeSize {
		prev = c
	}
	prev.Leaves, prev.AllLeaves = nil, all
	out[c.Practice] = prev
}

// Root decodes RootHash.
func (c Checkpoint) Root() (tlog.Hash, error) {
	var h tlog.Hash
	b, err := base64.StdEncoding.DecodeString(c.RootHash)
	if err != nil || len(b) != tlog.HashSize {
		return h, errors.New("witness: bad root hash")
	}
	copy(h[:], b)
	return h, nil
}

// New makes a Checkpoint.
func New(practice string, size int64, root tlog.Hash, note string) Checkpoint {
	return Checkpoint{Practice: practice, TreeSize: size, RootHash: base64.StdEncoding.EncodeToString(root[:]), Note: note}
}

// File is a witness in an append-only JSON-lines file.
type File struct {
	path string
	mu   sync.Mutex
}

// NewFile opens (creating when missing) a witness file.
func NewFile(path string) (*File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("witness file: %w", err)
	}
	return &File{path: path}, f.Close()
}

// Post appends c.
func (w *File) Post(_ context.Context, c Checkpoint) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	f, err := os.OpenFile(w.path, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("witness file: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		_ = f.Close()
		return fmt.Errorf("witness file: %w", err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// Latest returns the largest checkpoint of every practice the file holds.
func (w *File) Latest(_ context.Context) (map[string]Checkpoint, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f, err := os.Open(w.path)
	if err != nil {
		return nil, fmt.Errorf("witness file: %w", err)
	}
	defer f.Close()
	out := map[string]Checkpoint{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	for sc.Scan() {
		var c Checkpoint
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			continue // a torn last line
		}
		merge(out, c)
	}
	return out, sc.Err()
}

// HTTP is a witness behind an HTTP endpoint: POST <url> with a Checkpoint
// as JSON stores it (2xx); GET <url> answers {"checkpoints":[…]}, the
// latest checkpoint of every practice it holds.
type HTTP struct {
	URL    string
	Client *http.Client
}

func (w *HTTP) client() *http.Client {
	if w.Client != nil {
		return w.Client
	}
	return &http.Client{Timeout: 10 * time.Second}
}

// Post sends c.
func (w *HTTP) Post(ctx context.Context, c Checkpoint) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.client().Do(req)
	if err != nil {
		return fmt.Errorf("witness: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("witness: status %d", resp.StatusCode)
	}
	return nil
}

// Latest fetches the witness's latest checkpoints.
func (w *HTTP) Latest(ctx context.Context) (map[string]Checkpoint, error) {
	if _, err := url.Parse(w.URL); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.URL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := w.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("witness: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("witness: status %d", resp.StatusCode)
	}
	var body struct {
		Checkpoints []Checkpoint `json:"checkpoints"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&body); err != nil {
		return nil, fmt.Errorf("witness: %w", err)
	}
	out := map[string]Checkpoint{}
	for _, c := range body.Checkpoints {
		merge(out, c)
	}
	return out, nil
}
