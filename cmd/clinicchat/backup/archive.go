package backup

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"
)

// Format is the archive format this code writes and reads.
const Format = "clinicchat-backup/1"

// ManifestName is the archive's last entry.
const ManifestName = "manifest.json"

// Manifest describes an archive: what it holds, with a SHA-256 and size for
// every other entry, and the cut it was taken at.
type Manifest struct {
	Format string    `json:"format"`
	Time   time.Time `json:"time"`
	// Version is the clinicchat build that wrote it (module version or
	// "(devel)").
	Version string `json:"version"`
	// CutMillis is how long every database's writes were held for the cut.
	CutMillis float64 `json:"cutMillis"`
	// Databases are the SQLite snapshots, all of one instant.
	Databases []Database `json:"databases"`
	// Streams are the JetStream events captured from each stream: every
	// event a durable consumer had not acknowledged before the cut, up to
	// the stream's last sequence at the cut.
	Streams []Stream `json:"streams"`
	// Blobs is how many attachment blobs the archive holds; MissingBlobs
	// names attachment rows of the snapshot whose bytes were gone when the
	// blobs were copied (only never-sent uploads the daily sweep removed).
	Blobs        int      `json:"blobs"`
	MissingBlobs []string `json:"missingBlobs,omitempty"`
	// Witness reports whether witness.jsonl (the audit witness file, copied
	// at the cut) is in the archive.
	Witness bool `json:"witness"`
	// KeysIncluded reports whether keys/ holds the operator's keys;
	// KeyFingerprints (SHA-256 of each key file, by archive name) are there
	// either way, so a restore can check the keys it is given.
	KeysIncluded    bool              `json:"keysIncluded"`
	KeyFingerprints map[string]string `json:"keyFingerprints"`
	// Files lists every entry but the manifest.
	Files []File `json:"files"`
}

// Database is one SQLite snapshot.
type Database struct {
	Name          string `json:"name"`
	SchemaVersion int    `json:"schemaVersion"`
	// OutboxDropped counts outbox rows removed from the snapshot because
	// their events are in the captured stream already.
	OutboxDropped int `json:"outboxDropped"`
}

// Stream is one stream's captured range.
type Stream struct {
	Name     string `json:"name"`
	FirstSeq uint64 `json:"firstSeq"` // first captured sequence (LastSeq+1 when none)
	LastSeq  uint64 `json:"lastSeq"`  // the stream's last sequence at the cut
	Events   int    `json:"events"`
}

// File is one archive entry.
type File struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Event is one captured JetStream message (events/<stream>.jsonl).
type Event struct {
	Seq     uint64              `json:"seq"`
	Subject string              `json:"subject"`
	Header  map[string][]string `json:"header,omitempty"`
	Data    []byte              `json:"data"`
}

// validName accepts the entry names the archive may hold: relative, clean,
// under one of the known top-level directories, no "..".
func validName(name string) bool {
	if name == ManifestName || name == "witness.jsonl" {
		return true
	}
	if name == "" || strings.HasPrefix(name, "/") || path.Clean(name) != name || strings.Contains(name, "\\") {
		return false
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." || part == "." || part == "" {
			return false
		}
	}
	top, rest, _ := strings.Cut(name, "/")
	switch top {
	case "data": // the databases and files of the data dir's top, and blobs/
		return strings.HasPrefix(rest, "blobs/") || !strings.Contains(rest, "/") && !strings.HasPrefix(rest, ".")
	case "events":
		return !strings.Contains(rest, "/") && strings.HasSuffix(rest, ".jsonl")
	case "keys":
		return !strings.Contains(rest, "/") && !strings.HasPrefix(rest, ".")
	}
	return false
}

// writer writes an archive: tar in gzip, a hash for every entry, the
// manifest last.
type writer struct {
	gz    *gzip.Writer
	tw    *tar.Writer
	files []File
}

func newWriter(w io.Writer) *writer {
	// Fastest compression: blobs are encrypted (incompressible), and the
	// backup runs beside live traffic.
	gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	return &writer{gz: gz, tw: tar.NewWriter(gz)}
}

// add writes one entry of size bytes from r.
func (a *writer) add(name string, size int64, r io.Reader) error {
	if !validName(name) {
		return fmt.Errorf("archive entry %q: not a valid name", name)
	}
	if err := a.tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: size, ModTime: time.Now().UTC().Truncate(time.Second),
		Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(a.tw, h), io.LimitReader(r, size))
	if err != nil {
		return fmt.Errorf("archive entry %s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("archive entry %s: %d bytes, not %d (the file changed while copied)", name, n, size)
	}
	a.files = append(a.files, File{Path: name, Size: size, SHA256: hex.EncodeToString(h.Sum(nil))})
	return nil
}

// addFile writes the file at p as entry name.
func (a *writer) addFile(name, p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	return a.add(name, st.Size(), f)
}

// finish writes the manifest (with the file list) and closes the archive.
func (a *writer) finish(m *Manifest) error {
	m.Files = a.files
	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := a.tw.WriteHeader(&tar.Header{Name: ManifestName, Mode: 0o600, Size: int64(len(raw)),
		ModTime: time.Now().UTC().Truncate(time.Second), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return err
	}
	if _, err := a.tw.Write(raw); err != nil {
		return err
	}
	if err := a.tw.Close(); err != nil {
		return err
	}
	return a.gz.Close()
}

// MaxManifestBytes bounds the manifest a reader accepts.
const MaxManifestBytes = 64 << 20

// walk reads an archive and calls fn for every entry but the manifest (with
// a reader of its bytes); it returns the manifest, which must be the last
// entry. It refuses entries of other types, bad names and repeated names.
func walk(r io.Reader, fn func(name string, size int64, body io.Reader) error) (*Manifest, error) {
	gz, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("not a clinicchat backup (gzip): %w", err)
	}
	tr := tar.NewReader(gz)
	seen := map[string]bool{}
	var m *Manifest
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("archive is damaged: %w", err)
		}
		if m != nil {
			return nil, fmt.Errorf("archive entry %q after the manifest", h.Name)
		}
		if h.Typeflag != tar.TypeReg || !validName(h.Name) || h.Size < 0 {
			return nil, fmt.Errorf("archive entry %q: not a file this backup writes", h.Name)
		}
		if seen[h.Name] {
			return nil, fmt.Errorf("archive entry %q appears twice", h.Name)
		}
		seen[h.Name] = true
		if h.Name == ManifestName {
			if h.Size > MaxManifestBytes {
				return nil, errors.New("manifest is too large")
			}
			raw, err := io.ReadAll(tr)
			if err != nil {
				return nil, fmt.Errorf("archive is damaged: %w", err)
			}
			m = &Manifest{}
			if err := json.Unmarshal(raw, m); err != nil {
				return nil, fmt.Errorf("manifest: %w", err)
			}
			continue
		}
		if err := fn(h.Name, h.Size, tr); err != nil {
			return nil, err
		}
	}
	if m == nil {
		return nil, errors.New("archive has no manifest: the backup did not finish")
	}
	if m.Format != Format {
		return nil, fmt.Errorf("archive format %q: this clinicchat reads %q", m.Format, Format)
	}
	return m, nil
}

// Verify reads the archive at p and checks it entirely against its
// manifest: every entry listed, with its size and SHA-256, nothing more.
// It writes nothing.
func Verify(p string) (*Manifest, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	got := map[string]File{}
	m, err := walk(f, func(name string, size int64, body io.Reader) error {
		h := sha256.New()
		n, err := io.Copy(h, body)
		if err != nil {
			return fmt.Errorf("archive is damaged at %s: %w", name, err)
		}
		got[name] = File{Path: name, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := m.check(got); err != nil {
		return nil, err
	}
	return m, nil
}

// check compares what was read with the manifest's list.
func (m *Manifest) check(got map[string]File) error {
	var problems []error
	listed := map[string]bool{}
	for _, f := range m.Files {
		listed[f.Path] = true
		g, ok := got[f.Path]
		switch {
		case !ok:
			problems = append(problems, fmt.Errorf("%s: in the manifest, missing from the archive", f.Path))
		case g.Size != f.Size || g.SHA256 != f.SHA256:
			problems = append(problems, fmt.Errorf("%s: checksum or size differs from the manifest", f.Path))
		}
	}
	for name := range got {
		if !listed[name] {
			problems = append(problems, fmt.Errorf("%s: in the archive, not in the manifest", name))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("archive does not match its manifest:\n%w", errors.Join(problems...))
	}
	return nil
}

// file returns the manifest's entry for name.
func (m *Manifest) file(name string) (File, bool) {
	for _, f := range m.Files {
		if f.Path == name {
			return f, true
		}
	}
	return File{}, false
}
