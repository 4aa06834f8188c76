package backup

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"modernc.org/sqlite"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// Source is a running all-in-one, as the snapshot sees it.
type Source struct {
	// DataDir holds the databases (Databases, file names) and the other
	// files copied as they are (Files, e.g. the dev token key).
	DataDir   string
	Databases []string
	Files     []string
	// BlobDir holds the attachment blobs (encrypted: they are copied as
	// they are); AttachmentDB is the database whose attachments table
	// names them.
	BlobDir      string
	AttachmentDB string
	// JS reaches the embedded JetStream.
	JS jetstream.JetStream
	// WitnessFile is the audit witness file ("" when none).
	WitnessFile string
	// Keys are the operator's keys: archive name (audit-signing.key,
	// audit-signing.key.pub, attachment.kek) → path.
	Keys map[string]string
}

// Options shape one backup.
type Options struct {
	// IncludeKeys puts the keys into the archive (keys/). Without it only
	// their fingerprints are recorded and the operator keeps the keys dir
	// apart, as the running instance does.
	IncludeKeys bool
}

// lockWait bounds the wait for one database's write lock; a cut that does
// not get every lock releases them all and tries again (up to cutAttempts
// times), so the services' writers (busy timeout 10 s) never wait long.
const (
	lockWait    = 2 * time.Second
	cutAttempts = 5
)

// Write takes a consistent snapshot of src while it serves and writes the
// archive to w. The cut:
//
//  1. each durable consumer's acknowledged floor is read (everything at or
//     below it is in that consumer's database: consumers acknowledge after
//     their commit);
//  2. every database's write lock is taken (BEGIN IMMEDIATE, the services'
//     writers wait on their busy timeout), a read transaction is opened on
//     each (its snapshot), the witness file is copied and each stream's
//     last sequence read; then the locks are released. No database
//     commits while the locks are held, so the snapshots are one instant;
//  3. each database is copied from its read transaction with SQLite's
//     online backup API;
//  4. each stream's events from the lowest floor to its last sequence at
//     the cut are captured, and their rows dropped from the snapshots'
//     outboxes (the restore publishes them, in their order, before the
//     relays publish what is left);
//  5. the blobs are copied: blobs are written before their row commits and
//     never change, so every attachment row of the snapshot has its blob.
func Write(ctx context.Context, src Source, opts Options, w io.Writer) (*Manifest, error) {
	// Scratch dirs of a backup cut off by a crash (one backup runs at a
	// time, and one process serves a data dir).
	if stale, err := filepath.Glob(filepath.Join(src.DataDir, ".backup-*")); err == nil {
		for _, d := range stale {
			_ = os.RemoveAll(d)
		}
	}
	tmp, err := os.MkdirTemp(src.DataDir, ".backup-")
	if err != nil {
		return nil, fmt.Errorf("backup scratch dir: %w", err)
	}
	defer os.RemoveAll(tmp)

	m := &Manifest{Format: Format, Time: time.Now().UTC(), Version: buildVersion(), KeyFingerprints: map[string]string{}}
	streams := natsx.Streams(natsx.StreamsConfig{})
	floors, err := ackFloors(ctx, src.JS, streams)
	if err != nil {
		return nil, err
	}
	var c *cut
	for attempt := 1; ; attempt++ {
		if c, err = takeCut(ctx, src, streams); err == nil || attempt == cutAttempts || ctx.Err() != nil {
			break
		}
		select { // a database was busy for lockWait: let its writer finish
		case <-ctx.Done():
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
	}
	if err != nil {
		return nil, fmt.Errorf("cut: %w", err)
	}
	defer c.close()
	m.CutMillis = float64(c.held.Microseconds()) / 1000
	if c.witnessSize >= 0 {
		if err := copyPrefix(src.WitnessFile, filepath.Join(tmp, "witness.jsonl"), c.witnessSize); err != nil {
			return nil, fmt.Errorf("witness file: %w", err)
		}
		m.Witness = true
	}

	// The databases, from their read transactions.
	for i, name := range src.Databases {
		if err := snapshotDB(ctx, c.pins[i], filepath.Join(tmp, name)); err != nil {
			return nil, fmt.Errorf("snapshot of %s: %w", name, err)
		}
	}
	c.close()

	// The events nobody has consumed everywhere yet.
	captured := map[string]bool{}
	if err := os.MkdirAll(filepath.Join(tmp, "events"), 0o700); err != nil {
		return nil, err
	}
	for _, sc := range streams {
		st, err := captureStream(ctx, src.JS, sc.Name, floors[sc.Name]+1, c.last[sc.Name], filepath.Join(tmp, "events", sc.Name+".jsonl"), captured)
		if err != nil {
			return nil, fmt.Errorf("events of %s: %w", sc.Name, err)
		}
		m.Streams = append(m.Streams, st)
	}
	for _, name := range src.Databases {
		d, err := finishDB(ctx, filepath.Join(tmp, name), captured)
		if err != nil {
			return nil, fmt.Errorf("snapshot of %s: %w", name, err)
		}
		d.Name = name
		m.Databases = append(m.Databases, d)
	}
	attachments, err := attachmentIDs(ctx, filepath.Join(tmp, src.AttachmentDB))
	if err != nil {
		return nil, err
	}

	// The archive.
	a := newWriter(w)
	for _, name := range src.Databases {
		if err := a.addFile("data/"+name, filepath.Join(tmp, name)); err != nil {
			return nil, err
		}
	}
	for _, name := range src.Files {
		if err := a.addFile("data/"+name, filepath.Join(src.DataDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	blobs, err := addBlobs(a, src.BlobDir)
	if err != nil {
		return nil, err
	}
	m.Blobs = len(blobs)
	for _, id := range attachments {
		if !blobs[id] {
			m.MissingBlobs = append(m.MissingBlobs, id)
		}
	}
	for _, sc := range streams {
		if err := a.addFile("events/"+sc.Name+".jsonl", filepath.Join(tmp, "events", sc.Name+".jsonl")); err != nil {
			return nil, err
		}
	}
	if m.Witness {
		if err := a.addFile("witness.jsonl", filepath.Join(tmp, "witness.jsonl")); err != nil {
			return nil, err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(src.Keys)) {
		p := src.Keys[name]
		sum, err := fileSHA256(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", name, err)
		}
		m.KeyFingerprints[name] = sum
		if opts.IncludeKeys {
			if err := a.addFile("keys/"+name, p); err != nil {
				return nil, err
			}
		}
	}
	m.KeysIncluded = opts.IncludeKeys
	if err := a.finish(m); err != nil {
		return nil, err
	}
	return m, nil
}

// ackFloors is, per stream, the lowest acknowledged floor of its durable
// consumers (the stream's first sequence - 1 when it has none).
func ackFloors(ctx context.Context, js jetstream.JetStream, streams []jetstream.StreamConfig) (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, sc := range streams {
		s, err := js.Stream(ctx, sc.Name)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", sc.Name, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", sc.Name, err)
		}
		floor, any := uint64(0), false
		lister := s.ListConsumers(ctx)
		for ci := range lister.Info() {
			if ci.Config.Durable == "" {
				continue // an event stream's ephemeral consumer: no state to keep
			}
			if !any || ci.AckFloor.Stream < floor {
				floor, any = ci.AckFloor.Stream, true
			}
		}
		if err := lister.Err(); err != nil {
			return nil, fmt.Errorf("consumers of %s: %w", sc.Name, err)
		}
		if first := info.State.FirstSeq; !any || floor+1 < first {
			if first > 0 {
				floor = first - 1
			}
		}
		out[sc.Name] = floor
	}
	return out, nil
}

// cut holds the read transactions of one instant.
type cut struct {
	pools []*sql.DB
	pins  []*sql.Conn
	last  map[string]uint64
	// witnessSize is the witness file's size at the cut (-1: no file). The
	// file is append-only, so its first witnessSize bytes are its content
	// at the cut, copied after the locks are released.
	witnessSize int64
	held        time.Duration
}

func (c *cut) close() {
	for _, p := range c.pins {
		_, _ = p.ExecContext(context.Background(), "ROLLBACK")
		_ = p.Close()
	}
	for _, p := range c.pools {
		_ = p.Close()
	}
	c.pins, c.pools = nil, nil
}

func openSQLite(path string, extra string, busy time.Duration) (*sql.DB, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err // never create a database that is not there
	}
	db, err := sql.Open("sqlite", fmt.Sprintf("file:%s?_pragma=busy_timeout(%d)%s", path, busy.Milliseconds(), extra))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

// takeCut holds every database's write lock, opens a read transaction on
// each, notes the witness file's size and each stream's last sequence.
func takeCut(ctx context.Context, src Source, streams []jetstream.StreamConfig) (_ *cut, err error) {
	c := &cut{last: map[string]uint64{}, witnessSize: -1}
	var locks []*sql.Conn
	release := func() {
		for _, l := range locks {
			_, _ = l.ExecContext(context.Background(), "ROLLBACK")
			_ = l.Close()
		}
		locks = nil
	}
	defer func() {
		release()
		if err != nil {
			c.close()
		}
	}()
	for _, name := range src.Databases {
		p := filepath.Join(src.DataDir, name)
		lockPool, err := openSQLite(p, "", lockWait)
		if err != nil {
			return nil, fmt.Errorf("database %s: %w", name, err)
		}
		c.pools = append(c.pools, lockPool)
		l, err := lockPool.Conn(ctx)
		if err != nil {
			return nil, fmt.Errorf("database %s: %w", name, err)
		}
		if _, err := l.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
			_ = l.Close()
			return nil, fmt.Errorf("write lock of %s: %w", name, err)
		}
		locks = append(locks, l)
	}
	start := time.Now()
	for _, name := range src.Databases {
		pinPool, err := openSQLite(filepath.Join(src.DataDir, name), "&_pragma=query_only(1)", lockWait)
		if err != nil {
			return nil, err
		}
		c.pools = append(c.pools, pinPool)
		pin, err := pinPool.Conn(ctx)
		if err != nil {
			return nil, err
		}
		c.pins = append(c.pins, pin)
		var n int
		if _, err := pin.ExecContext(ctx, "BEGIN"); err != nil {
			return nil, fmt.Errorf("read transaction on %s: %w", name, err)
		}
		if err := pin.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema").Scan(&n); err != nil {
			return nil, fmt.Errorf("read transaction on %s: %w", name, err)
		}
	}
	if src.WitnessFile != "" {
		switch st, err := os.Stat(src.WitnessFile); {
		case err == nil:
			c.witnessSize = st.Size()
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("witness file: %w", err)
		}
	}
	for _, sc := range streams {
		s, err := src.JS.Stream(ctx, sc.Name)
		if err != nil {
			return nil, err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return nil, err
		}
		c.last[sc.Name] = info.State.LastSeq
	}
	release()
	c.held = time.Since(start)
	return c, nil
}

// snapshotDB copies the database of pin's read transaction to dst.
func snapshotDB(ctx context.Context, pin *sql.Conn, dst string) error {
	return pin.Raw(func(dc any) error {
		b, ok := dc.(interface {
			NewBackup(string) (*sqlite.Backup, error)
		})
		if !ok {
			return errors.New("the SQLite driver offers no online backup")
		}
		bk, err := b.NewBackup(dst)
		if err != nil {
			return err
		}
		for {
			more, err := bk.Step(1024)
			if err != nil {
				_ = bk.Finish()
				return err
			}
			if !more {
				break
			}
			if ctx.Err() != nil {
				_ = bk.Finish()
				return ctx.Err()
			}
		}
		return bk.Finish()
	})
}

// finishDB drops the captured events' outbox rows from a snapshot, makes
// it a single file (rollback journal; the service turns WAL back on) and
// checks it.
func finishDB(ctx context.Context, p string, captured map[string]bool) (Database, error) {
	var d Database
	db, err := openSQLite(p, "", 10*time.Second)
	if err != nil {
		return d, err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "PRAGMA journal_mode=DELETE"); err != nil {
		return d, err
	}
	var hasOutbox int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema WHERE type='table' AND name='outbox'").Scan(&hasOutbox); err != nil {
		return d, err
	}
	if hasOutbox > 0 && len(captured) > 0 {
		// By seq, the key: the send path's outboxes have no index on id.
		rows, err := db.QueryContext(ctx, "SELECT seq, id FROM outbox")
		if err != nil {
			return d, err
		}
		var drop []int64
		for rows.Next() {
			var seq int64
			var id string
			if err := rows.Scan(&seq, &id); err != nil {
				rows.Close()
				return d, err
			}
			if captured[id] {
				drop = append(drop, seq)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return d, err
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return d, err
		}
		for _, seq := range drop {
			if _, err := tx.ExecContext(ctx, "DELETE FROM outbox WHERE seq = ?", seq); err != nil {
				_ = tx.Rollback()
				return d, err
			}
		}
		if err := tx.Commit(); err != nil {
			return d, err
		}
		d.OutboxDropped = len(drop)
	}
	if err := db.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").Scan(&d.SchemaVersion); err != nil {
		return d, fmt.Errorf("schema version: %w", err)
	}
	if err := integrityCheck(ctx, db); err != nil {
		return d, err
	}
	return d, nil
}

func integrityCheck(ctx context.Context, db *sql.DB) error {
	var res string
	if err := db.QueryRowContext(ctx, "PRAGMA quick_check").Scan(&res); err != nil {
		return err
	}
	if res != "ok" {
		return fmt.Errorf("integrity check: %s", res)
	}
	return nil
}

// attachmentIDs lists the attachments the snapshot knows.
func attachmentIDs(ctx context.Context, p string) ([]string, error) {
	db, err := openSQLite(p, "&_pragma=query_only(1)", 10*time.Second)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, "SELECT id FROM attachments ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("attachments of the snapshot: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// captureStream writes the events from..to of stream to p (JSON lines),
// marking each event id in captured.
func captureStream(ctx context.Context, js jetstream.JetStream, stream string, from, to uint64, p string, captured map[string]bool) (Stream, error) {
	st := Stream{Name: stream, FirstSeq: from, LastSeq: to}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return st, err
	}
	defer f.Close()
	bw := bufio.NewWriter(f)
	enc := json.NewEncoder(bw)
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return st, err
	}
	first := true
	for seq := from; seq <= to; seq++ {
		msg, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			if first {
				st.FirstSeq = seq + 1 // aged out since the floors were read
			}
			continue
		}
		if err != nil {
			return st, fmt.Errorf("event %d: %w", seq, err)
		}
		first = false
		if err := enc.Encode(Event{Seq: seq, Subject: msg.Subject, Header: msg.Header, Data: msg.Data}); err != nil {
			return st, err
		}
		if id := msg.Header.Get(jetstream.MsgIDHeader); id != "" {
			captured[id] = true
		}
		st.Events++
	}
	if err := bw.Flush(); err != nil {
		return st, err
	}
	return st, f.Close()
}

// addBlobs writes every blob under dir (not its tmp directory) as
// data/blobs/<rel>; it returns the blob ids written.
func addBlobs(a *writer, dir string) (map[string]bool, error) {
	ids := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p != dir {
				return nil // removed meanwhile
			}
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if d.IsDir() {
			if rel == "tmp" {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		switch err := a.addFile("data/blobs/"+filepath.ToSlash(rel), p); {
		case errors.Is(err, fs.ErrNotExist):
			return nil // a never-sent upload swept meanwhile
		case err != nil:
			return err
		}
		ids[filepath.Base(p)] = true
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return ids, nil // no upload yet
	}
	return ids, err
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}

// copyPrefix copies the first n bytes of src to dst, up to the last whole
// line (a checkpoint being appended at the cut is left out: it is in the
// database, and the next one covers it).
func copyPrefix(src, dst string, n int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	if _, err := io.CopyN(out, in, n); err != nil {
		return fmt.Errorf("%d bytes at the cut: %w", n, err)
	}
	// Find the last newline, reading backwards a block at a time.
	buf := make([]byte, 64<<10)
	end := n
	for end > 0 {
		start := max(0, end-int64(len(buf)))
		chunk := buf[:end-start]
		if _, err := out.ReadAt(chunk, start); err != nil {
			return err
		}
		if i := bytes.LastIndexByte(chunk, '\n'); i >= 0 {
			return out.Truncate(start + int64(i) + 1)
		}
		end = start
	}
	return out.Truncate(0)
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// buildVersion is the module version of this binary.
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v += " " + s.Value
			}
		}
		return strings.TrimSpace(v)
	}
	return "unknown"
}
