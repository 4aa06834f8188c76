package attachment

import (
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/clinicchat/clinicchat/services/attachment/internal/blob"
)

// Encryption is how attachment bytes are encrypted at rest: each file with
// its own random data key (AES-256-GCM in 64 KiB chunks), the data keys
// wrapped by the operator's key-encryption key (KEK).
type Encryption struct {
	// KEKFile holds the current KEK: 32 bytes, raw or base64 or hex (a
	// file or a mounted Kubernetes Secret). Required.
	KEKFile string
	// PreviousKEKFiles (comma separated) unwrap blobs wrapped before a
	// rotation, until the rewrap subcommand has re-wrapped them.
	PreviousKEKFiles string
}

// Flags registers --attachment-kek-file and --attachment-previous-kek-files.
func (e *Encryption) Flags(fs *flag.FlagSet) {
	fs.StringVar(&e.KEKFile, "attachment-kek-file", "", "key-encryption key file (32 bytes, raw, base64 or hex) that wraps each attachment's data key (required)")
	fs.StringVar(&e.PreviousKEKFiles, "attachment-previous-kek-files", "", "comma-separated earlier key-encryption key files, still accepted for reading until `attachment rewrap`")
}

// Validate reports every problem at once.
func (e *Encryption) Validate() error {
	if e.KEKFile == "" {
		return errors.New("attachment: --attachment-kek-file is required (attachments are encrypted at rest)")
	}
	return nil
}

// Keyring loads the KEKs.
func (e *Encryption) keyring() (*blob.Keyring, error) {
	cur, err := blob.ReadKEKFile(e.KEKFile)
	if err != nil {
		return nil, fmt.Errorf("--attachment-kek-file: %w", err)
	}
	var prev [][]byte
	for _, p := range strings.Split(e.PreviousKEKFiles, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		k, err := blob.ReadKEKFile(p)
		if err != nil {
			return nil, fmt.Errorf("--attachment-previous-kek-files: %w", err)
		}
		prev = append(prev, k)
	}
	return blob.NewKeyring(cur, prev...)
}

// EnsureDevKEK writes a new random KEK to path unless one is there (the
// all-in-one's dev mode) and reports whether it made one.
func EnsureDevKEK(path string) (bool, error) { return blob.GenerateKEKFile(path) }

// Rewrap re-wraps every blob in blobDir under enc's current KEK (rotation:
// the previous KEKs unwrap, nothing is re-encrypted) and reports how many
// blobs changed.
func Rewrap(blobDir string, enc Encryption) (int, error) {
	if err := enc.Validate(); err != nil {
		return 0, err
	}
	keys, err := enc.keyring()
	if err != nil {
		return 0, err
	}
	s, err := blob.OpenEncrypted(blobDir, keys)
	if err != nil {
		return 0, err
	}
	return s.RewrapAll()
}
