package backup_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/backup"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// a service database as the snapshot sees one: migrations, an outbox and
// (here) the attachments table.
const schema = `
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, checksum TEXT);
INSERT INTO schema_migrations (version) VALUES (1), (3);
CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, subject TEXT NOT NULL,
  payload BLOB NOT NULL, created_at BIGINT NOT NULL);
CREATE TABLE attachments (practice TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (practice, id));
`

func openDB(t *testing.T, p string) *sql.DB {
	db, err := sql.Open("sqlite", "file:"+p+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)")
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func publish(t *testing.T, js jetstream.JetStream, id string) uint64 {
	msg := nats.NewMsg(natsx.SubjectMessageCreated + ".demo")
	msg.Header.Set(jetstream.MsgIDHeader, id)
	msg.Data = []byte("event " + id)
	ack, err := js.PublishMsg(context.Background(), msg)
	require.NoError(t, err)
	return ack.Sequence
}

// An event published and gone from its outbox but not yet acknowledged by
// a durable consumer lives only in JetStream: the backup captures it (from
// the lowest acknowledged floor to the last sequence at the cut), drops
// the captured events' outbox rows from the snapshot, and the restore puts
// them back into a new store with their sequence numbers, before the rows
// the relay will publish. Keys stay out unless asked for, and a restore
// without them refuses until the operator puts them in place.
func TestCapturesWhatOnlyJetStreamHolds(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	dataDir := filepath.Join(root, "data")
	require.NoError(t, os.MkdirAll(filepath.Join(dataDir, "blobs", "ab"), 0o700))
	ns, nc, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: filepath.Join(dataDir, "nats")}, testkit.Logger(t))
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close(); ns.Shutdown(); ns.WaitForShutdown() })
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	require.NoError(t, natsx.EnsureStreams(ctx, js, natsx.StreamsConfig{}))

	db := openDB(t, filepath.Join(dataDir, "svc.db"))
	_, err = db.Exec(schema)
	require.NoError(t, err)
	// e1 consumed; e2 published, its row not yet deleted; e3 published and
	// deleted, not consumed; e4 not published yet.
	for _, id := range []string{"e1", "e2", "e3"} {
		publish(t, js, id)
	}
	for _, id := range []string{"e2", "e4"} {
		_, err = db.Exec(`INSERT INTO outbox (id, subject, payload, created_at) VALUES (?, ?, ?, 0)`, id, natsx.SubjectMessageCreated+".demo", []byte("event "+id))
		require.NoError(t, err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, natsx.StreamDelivery, jetstream.ConsumerConfig{Durable: "audit", AckPolicy: jetstream.AckExplicitPolicy})
	require.NoError(t, err)
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	for m := range batch.Messages() {
		require.NoError(t, m.DoubleAck(ctx))
	}
	_, err = db.Exec(`INSERT INTO attachments (practice, id) VALUES ('demo', 'abcdef')`)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dataDir, "blobs", "ab", "abcdef"), []byte("sealed bytes"), 0o600))
	keysDir := filepath.Join(root, "keys")
	require.NoError(t, os.MkdirAll(keysDir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(keysDir, "attachment.kek"), []byte("kek"), 0o600))
	witness := filepath.Join(root, "witness.jsonl")
	// A checkpoint being appended at the cut (no newline yet) is left out.
	require.NoError(t, os.WriteFile(witness, []byte(`{"practice":"demo"}`+"\n"+`{"practice":"de`), 0o600))

	src := backup.Source{DataDir: dataDir, Databases: []string{"svc.db"}, BlobDir: filepath.Join(dataDir, "blobs"), AttachmentDB: "svc.db",
		JS: js, WitnessFile: witness, Keys: map[string]string{"attachment.kek": filepath.Join(keysDir, "attachment.kek")}}
	archive := filepath.Join(root, "b.tar.gz")
	f, err := os.Create(archive)
	require.NoError(t, err)
	m, err := backup.Write(ctx, src, backup.Options{}, f)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	var delivery backup.Stream
	for _, s := range m.Streams {
		if s.Name == natsx.StreamDelivery {
			delivery = s
		}
	}
	require.Equal(t, backup.Stream{Name: natsx.StreamDelivery, FirstSeq: 2, LastSeq: 3, Events: 2}, delivery)
	require.Equal(t, []backup.Database{{Name: "svc.db", SchemaVersion: 3, OutboxDropped: 1}}, m.Databases)
	require.Equal(t, 1, m.Blobs)
	require.Empty(t, m.MissingBlobs)
	require.False(t, m.KeysIncluded)
	require.Contains(t, m.KeyFingerprints, "attachment.kek")
	_, err = backup.Verify(archive)
	require.NoError(t, err)

	// Without the keys in the archive or in place: refused, nothing written.
	target := backup.Target{DataDir: filepath.Join(root, "restored")}
	_, err = backup.Restore(ctx, archive, target, testkit.Logger(t))
	require.ErrorContains(t, err, "archive holds no keys")
	require.NoDirExists(t, target.DataDir)
	require.NoFileExists(t, filepath.Join(root, "restored-witness.jsonl"))
	// A different key in place: refused.
	require.NoError(t, os.MkdirAll(filepath.Join(root, "restored-keys"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(root, "restored-keys", "attachment.kek"), []byte("other"), 0o600))
	_, err = backup.Restore(ctx, archive, target, testkit.Logger(t))
	require.ErrorContains(t, err, "differs")
	// The operator's key in place: restored.
	require.NoError(t, os.WriteFile(filepath.Join(root, "restored-keys", "attachment.kek"), []byte("kek"), 0o600))
	_, err = backup.Restore(ctx, archive, target, testkit.Logger(t))
	require.NoError(t, err)

	blob, err := os.ReadFile(filepath.Join(target.DataDir, "blobs", "ab", "abcdef"))
	require.NoError(t, err)
	require.Equal(t, "sealed bytes", string(blob))
	w, err := os.ReadFile(filepath.Join(root, "restored-witness.jsonl"))
	require.NoError(t, err)
	require.Equal(t, `{"practice":"demo"}`+"\n", string(w))
	rdb := openDB(t, filepath.Join(target.DataDir, "svc.db"))
	var left []string
	rows, err := rdb.Query(`SELECT id FROM outbox ORDER BY seq`)
	require.NoError(t, err)
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		left = append(left, id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"e4"}, left, "captured events leave the outbox; the unpublished one stays")
	require.NoDirExists(t, filepath.Join(target.DataDir, ".restore-events"))

	// The restored store: e2 and e3 with their sequence numbers.
	ns2, nc2, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: filepath.Join(target.DataDir, "nats")}, testkit.Logger(t))
	require.NoError(t, err)
	defer func() { nc2.Close(); ns2.Shutdown(); ns2.WaitForShutdown() }()
	js2, err := jetstream.New(nc2)
	require.NoError(t, err)
	s, err := js2.Stream(ctx, natsx.StreamDelivery)
	require.NoError(t, err)
	require.Equal(t, int64(-1), s.CachedInfo().Config.MaxBytes, "stored as a clean stop leaves it: opened with 4 MiB blocks")
	require.NoError(t, natsx.EnsureStreams(ctx, js2, natsx.StreamsConfig{SmallBlocks: true}), "the all-in-one's reconcile accepts the restored streams")
	s, err = js2.Stream(ctx, natsx.StreamDelivery)
	require.NoError(t, err)
	require.Positive(t, s.CachedInfo().Config.MaxBytes, "the declared limits back")
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(2), info.State.FirstSeq)
	require.Equal(t, uint64(3), info.State.LastSeq)
	for seq, id := range map[uint64]string{2: "e2", 3: "e3"} {
		msg, err := s.GetMsg(ctx, seq)
		require.NoError(t, err)
		require.Equal(t, id, msg.Header.Get(jetstream.MsgIDHeader))
		require.Equal(t, "event "+id, string(msg.Data))
	}
}

// The commands: usage on --help, required flags, a clear error when no
// instance listens, and --check on something that is not an archive.
func TestCommands(t *testing.T) {
	var out, errOut bytes.Buffer
	require.NoError(t, backup.Main("backup", []string{"--help"}, &out, &errOut))
	require.Contains(t, errOut.String(), "Usage: clinicchat backup --out FILE")
	require.NoError(t, backup.Main("restore", []string{"-h"}, &out, &errOut))
	require.Contains(t, errOut.String(), "Usage: clinicchat restore --from FILE --data-dir DIR")
	require.ErrorContains(t, backup.Main("backup", nil, &out, &errOut), "--out is required")
	require.ErrorContains(t, backup.Main("restore", []string{"--data-dir", t.TempDir()}, &out, &errOut), "--from is required")

	dir := t.TempDir()
	err := backup.Main("backup", []string{"--data-dir", dir, "--out", filepath.Join(dir, "b.tar.gz")}, &out, &errOut)
	require.ErrorContains(t, err, "is clinicchat running with this --data-dir?")
	require.NoFileExists(t, filepath.Join(dir, "b.tar.gz.partial"), "a failed backup leaves no file")

	junk := filepath.Join(dir, "junk.tar.gz")
	require.NoError(t, os.WriteFile(junk, []byte("not an archive"), 0o600))
	require.ErrorContains(t, backup.Main("restore", []string{"--check", "--from", junk}, &out, &errOut), "not a clinicchat backup")
	target := filepath.Join(dir, "restored")
	require.Error(t, backup.Main("restore", []string{"--from", junk, "--data-dir", target}, &out, &errOut))
	require.NoDirExists(t, target)
}

// An archive entry outside the layout (a path that climbs out, an absolute
// path, a hidden staging name, a link) is refused before anything is
// written.
func TestRefusesEntriesOutsideTheLayout(t *testing.T) {
	for _, h := range []tar.Header{
		{Name: "../evil", Typeflag: tar.TypeReg},
		{Name: "data/../../evil", Typeflag: tar.TypeReg},
		{Name: "/etc/evil", Typeflag: tar.TypeReg},
		{Name: "data/.restore-keys/attachment.kek", Typeflag: tar.TypeReg},
		{Name: "events/x/y.jsonl", Typeflag: tar.TypeReg},
		{Name: "data/blobs/ab/link", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"},
	} {
		t.Run(h.Name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "a.tar.gz")
			f, err := os.Create(p)
			require.NoError(t, err)
			gz := gzip.NewWriter(f)
			tw := tar.NewWriter(gz)
			h.Mode = 0o600
			require.NoError(t, tw.WriteHeader(&h))
			require.NoError(t, tw.Close())
			require.NoError(t, gz.Close())
			require.NoError(t, f.Close())
			_, err = backup.Restore(context.Background(), p, backup.Target{DataDir: filepath.Join(dir, "restored")}, testkit.Logger(t))
			require.ErrorContains(t, err, "not a file this backup writes")
			require.NoDirExists(t, filepath.Join(dir, "restored"))
			require.NoFileExists(t, filepath.Join(dir, "evil"))
		})
	}
}
