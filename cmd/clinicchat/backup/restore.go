package backup

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// Target is where a restore puts things: the all-in-one's --data-dir,
// --keys-dir and --audit-witness-file (the defaults are the all-in-one's).
type Target struct {
	DataDir     string
	KeysDir     string
	WitnessFile string
}

func (t Target) withDefaults() Target {
	if t.KeysDir == "" {
		t.KeysDir = filepath.Clean(t.DataDir) + "-keys"
	}
	if t.WitnessFile == "" {
		t.WitnessFile = filepath.Clean(t.DataDir) + "-witness.jsonl"
	}
	return t
}

// Restore verifies the archive entirely, then rebuilds the instance it
// holds into t: the databases and blobs into a fresh data dir, the captured
// events into a fresh JetStream store there (with their sequence numbers),
// the witness file and, when the archive holds them, the keys. Nothing
// appears at a target path until everything is written and checked: the
// data dir is built beside it and renamed at the end. It refuses a data dir
// that exists and is not empty, a witness file that exists, and keys that
// differ from the archive's.
func Restore(ctx context.Context, archive string, t Target, log *zap.Logger) (*Manifest, error) {
	if t.DataDir == "" {
		return nil, errors.New("--data-dir is required")
	}
	t = t.withDefaults()
	m, err := Verify(archive)
	if err != nil {
		return nil, err
	}
	keysToWrite, err := checkTargets(m, t)
	if err != nil {
		return nil, err
	}

	parent := filepath.Dir(filepath.Clean(t.DataDir))
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, err
	}
	staging, err := os.MkdirTemp(parent, "."+filepath.Base(t.DataDir)+".restore-")
	if err != nil {
		return nil, fmt.Errorf("staging dir: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			_ = os.RemoveAll(staging)
		}
	}()
	eventsDir := filepath.Join(staging, ".restore-events")
	keysStaging := filepath.Join(staging, ".restore-keys")
	witnessStaging := filepath.Join(staging, ".restore-witness.jsonl")
	if err := extract(archive, m, func(name string) string {
		switch top, rest, _ := strings.Cut(name, "/"); {
		case name == "witness.jsonl":
			return witnessStaging
		case top == "data":
			return filepath.Join(staging, filepath.FromSlash(rest))
		case top == "events":
			return filepath.Join(eventsDir, filepath.FromSlash(rest))
		case top == "keys" && keysToWrite[rest]:
			return filepath.Join(keysStaging, filepath.FromSlash(rest))
		}
		return ""
	}); err != nil {
		return nil, err
	}
	for _, d := range m.Databases {
		db, err := openSQLite(filepath.Join(staging, d.Name), "", 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("database %s: %w", d.Name, err)
		}
		err = integrityCheck(ctx, db)
		_ = db.Close()
		if err != nil {
			return nil, fmt.Errorf("database %s: %w", d.Name, err)
		}
	}
	if err := rebuildStreams(ctx, m, filepath.Join(staging, "nats"), eventsDir, log); err != nil {
		return nil, fmt.Errorf("JetStream store: %w", err)
	}
	if err := os.RemoveAll(eventsDir); err != nil {
		return nil, err
	}

	// Commit: keys, witness, then the data dir (the one that makes the
	// restore visible); undo the first two if a later step fails.
	var undo []func()
	defer func() {
		if !committed {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if len(keysToWrite) > 0 {
		if err := os.MkdirAll(t.KeysDir, 0o700); err != nil {
			return nil, err
		}
		for name := range keysToWrite {
			dst := filepath.Join(t.KeysDir, name)
			if err := place(filepath.Join(keysStaging, name), dst); err != nil {
				return nil, fmt.Errorf("key %s: %w", name, err)
			}
			undo = append(undo, func() { _ = os.Remove(dst) })
		}
	}
	_ = os.RemoveAll(keysStaging)
	if m.Witness {
		if err := os.MkdirAll(filepath.Dir(t.WitnessFile), 0o700); err != nil {
			return nil, err
		}
		if err := place(witnessStaging, t.WitnessFile); err != nil {
			return nil, fmt.Errorf("witness file: %w", err)
		}
		undo = append(undo, func() { _ = os.Remove(t.WitnessFile) })
		_ = os.Remove(witnessStaging)
	}
	if err := os.Remove(t.DataDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("data dir: %w", err) // not empty after all
	}
	if err := os.Rename(staging, t.DataDir); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	committed = true
	if d, err := os.Open(parent); err == nil { // the rename itself durable
		_ = d.Sync()
		_ = d.Close()
	}
	return m, nil
}

// checkTargets refuses targets a restore would overwrite and returns the
// keys to write (archive names).
func checkTargets(m *Manifest, t Target) (map[string]bool, error) {
	var problems []error
	if entries, err := os.ReadDir(t.DataDir); err == nil && len(entries) > 0 {
		problems = append(problems, fmt.Errorf("data dir %s is not empty: restore only into a new or empty directory", t.DataDir))
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		problems = append(problems, fmt.Errorf("data dir: %w", err))
	}
	if m.Witness {
		if _, err := os.Stat(t.WitnessFile); err == nil {
			problems = append(problems, fmt.Errorf("witness file %s exists: restore writes the archive's", t.WitnessFile))
		}
	}
	write := map[string]bool{}
	for name, want := range m.KeyFingerprints {
		if strings.ContainsAny(name, `/\`) || name == "" || name == "." || name == ".." {
			problems = append(problems, fmt.Errorf("key name %q is not valid", name))
			continue
		}
		p := filepath.Join(t.KeysDir, name)
		have, err := fileSHA256(p)
		switch {
		case err == nil && have == want:
			// the operator kept it: nothing to write
		case err == nil:
			problems = append(problems, fmt.Errorf("key %s differs from the one the backup was taken with (SHA-256 %s)", p, want))
		case !errors.Is(err, fs.ErrNotExist):
			problems = append(problems, fmt.Errorf("key %s: %w", p, err))
		case m.KeysIncluded:
			write[name] = true
		default:
			problems = append(problems, fmt.Errorf("key %s is missing and the archive holds no keys: put the key with SHA-256 %s there first "+
				"(or take backups with --keys)", p, want))
		}
	}
	return write, errors.Join(problems...)
}

// extract writes every entry that dst maps to a path, checking each
// against the manifest as it is written.
func extract(archive string, m *Manifest, dst func(name string) string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = walk(f, func(name string, size int64, body io.Reader) error {
		want, ok := m.file(name)
		if !ok {
			return fmt.Errorf("%s: not in the manifest", name)
		}
		p := dst(name)
		if p == "" {
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(out, h), body)
		if err == nil {
			err = out.Sync()
		}
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if n != want.Size || hex.EncodeToString(h.Sum(nil)) != want.SHA256 {
			return fmt.Errorf("%s: changed since it was verified", name)
		}
		return nil
	})
	return err
}

// rebuildStreams creates the streams in a new JetStream store at storeDir,
// each starting at its first captured sequence, and publishes the captured
// events in order, so each keeps its sequence number (live-event cursors
// taken before the backup still resume). Each is stored as
// natsx.SmallBlocksConfig has it, as the all-in-one's clean stop leaves its
// streams: the first start on the restored data dir opens them with 4 MiB
// blocks and stores their declared limits again before anything publishes.
func rebuildStreams(ctx context.Context, m *Manifest, storeDir, eventsDir string, log *zap.Logger) error {
	configs := map[string]jetstream.StreamConfig{}
	for _, sc := range natsx.Streams(natsx.StreamsConfig{}) {
		configs[sc.Name] = sc
	}
	ns, nc, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: storeDir}, log)
	if err != nil {
		return err
	}
	defer func() {
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	}()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	for _, st := range m.Streams {
		sc, ok := configs[st.Name]
		if !ok {
			return fmt.Errorf("stream %s: this clinicchat does not know it", st.Name)
		}
		sc = natsx.SmallBlocksConfig(sc)
		sc.FirstSeq = max(st.FirstSeq, 1)
		if _, err := js.CreateStream(ctx, sc); err != nil {
			return fmt.Errorf("stream %s: %w", st.Name, err)
		}
		if err := publishEvents(ctx, js, st, filepath.Join(eventsDir, st.Name+".jsonl")); err != nil {
			return fmt.Errorf("stream %s: %w", st.Name, err)
		}
	}
	return nil
}

func publishEvents(ctx context.Context, js jetstream.JetStream, st Stream, p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	dec := json.NewDecoder(bufio.NewReader(f))
	n := 0
	for {
		var ev Event
		if err := dec.Decode(&ev); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("event %d: %w", n, err)
		}
		n++
		if n > st.Events {
			return errors.New("more events than the manifest says")
		}
		ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: ev.Subject, Header: nats.Header(ev.Header), Data: ev.Data})
		if err != nil {
			return fmt.Errorf("event %d: %w", ev.Seq, err)
		}
		if ack.Sequence != ev.Seq {
			return fmt.Errorf("event %d came back as sequence %d", ev.Seq, ack.Sequence)
		}
	}
	if n != st.Events {
		return fmt.Errorf("%d events, the manifest says %d", n, st.Events)
	}
	return nil
}

// place puts a staged file at dst, never over an existing file: a hard
// link, or a copy when dst is on another file system.
func place(src, dst string) error {
	err := os.Link(src, dst)
	if err == nil || errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := copyFile(src, dst); err != nil {
		return err
	}
	f, err := os.Open(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
