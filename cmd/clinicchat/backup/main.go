// Package backup is `clinicchat backup` and `clinicchat restore`: a
// consistent online snapshot of a running all-in-one (every SQLite
// database at one instant, the JetStream events not yet consumed
// everywhere, the attachment blobs, the audit witness file and, on request,
// the operator's keys) in one tar.gz with a manifest, and its restore into a
// fresh data dir. The running instance takes the snapshot itself (ListenAdmin:
// a Unix socket in its data dir); the command only asks for it and writes
// the file. See Write for the cut and Restore for what it guarantees.
package backup

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/svcmain"
)

// Main runs `clinicchat backup` (cmd "backup") or `clinicchat restore`.
func Main(cmd string, args []string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch cmd {
	case "backup":
		return backupMain(ctx, args, stdout, stderr)
	case "restore":
		return restoreMain(ctx, args, stdout, stderr)
	}
	return fmt.Errorf("unknown command %q", cmd)
}

func backupMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("clinicchat backup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data-dir", "./.clinicchat", "the running instance's --data-dir (its admin socket is there)")
	socket := fs.String("admin-socket", "", "the instance's admin socket (default: <data-dir>/"+SocketName+")")
	out := fs.String("out", "", "archive to write (required; must not exist), e.g. clinicchat-2026-11-30.tar.gz")
	keys := fs.Bool("keys", false, "also put the audit signing key and the attachment key-encryption key in the archive "+
		"(then guard the archive like the keys; without it, keep the keys dir apart)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: clinicchat backup --out FILE [flags]\n\n"+
			"Takes a consistent snapshot of the clinicchat running on --data-dir while it serves:\n"+
			"every database at one instant, the events not yet consumed everywhere, the attachment\n"+
			"blobs (still encrypted) and the audit witness file, in one tar.gz with a manifest.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := svcmain.Parse(fs, args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if *out == "" {
		return errors.New("--out is required")
	}
	if *socket == "" {
		*socket = filepath.Join(*dataDir, SocketName)
	}
	m, err := Fetch(ctx, *socket, *out, *keys)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: %d databases, %d blobs, %d events in flight, keys included: %t (writes held %.1f ms)\n",
		*out, len(m.Databases), m.Blobs, eventCount(m), m.KeysIncluded, m.CutMillis)
	if len(m.MissingBlobs) > 0 {
		fmt.Fprintf(stdout, "note: %d never-sent uploads were swept while the blobs were copied\n", len(m.MissingBlobs))
	}
	return nil
}

func restoreMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("clinicchat restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	from := fs.String("from", "", "archive written by clinicchat backup (required)")
	var t Target
	fs.StringVar(&t.DataDir, "data-dir", "", "new data dir to restore into (required; must not exist or be empty)")
	fs.StringVar(&t.KeysDir, "keys-dir", "", "keys dir of the restored instance (default: <data-dir>-keys)")
	fs.StringVar(&t.WitnessFile, "audit-witness-file", "", "witness file of the restored instance (default: <data-dir>-witness.jsonl)")
	check := fs.Bool("check", false, "only verify the archive against its manifest; write nothing")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: clinicchat restore --from FILE --data-dir DIR [flags]\n\n"+
			"Verifies the archive entirely, then rebuilds the instance into a new data dir\n"+
			"(written beside it and renamed at the end). Start clinicchat on that dir afterwards.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	// Flags only: the CLINICCHAT_* environment is the running instance's.
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *from == "" {
		return errors.New("--from is required")
	}
	if *check {
		m, err := Verify(*from)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s verifies: taken %s by clinicchat %s, %d files\n", *from, m.Time.Format("2006-01-02 15:04:05Z"), m.Version, len(m.Files))
		return nil
	}
	m, err := Restore(ctx, *from, t, zap.NewNop())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "restored the backup of %s into %s (%d databases, %d blobs, %d events to replay)\n",
		m.Time.Format("2006-01-02 15:04:05Z"), t.DataDir, len(m.Databases), m.Blobs, eventCount(m))
	return nil
}

func eventCount(m *Manifest) int {
	n := 0
	for _, s := range m.Streams {
		n += s.Events
	}
	return n
}
