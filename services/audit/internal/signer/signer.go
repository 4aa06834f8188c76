// Package signer loads the checkpoint signing key (a golang.org/x/mod/sumdb/note
// Ed25519 signer key, "PRIVATE+KEY+<name>+<hash>+<base64>") and derives the
// matching verifier, and generates such a key for development.
package signer

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// algEd25519 is note's algorithm byte for Ed25519 keys.
const algEd25519 = 1

// Key is a checkpoint signer with its verifier.
type Key struct {
	Signer   note.Signer
	Verifier note.Verifier
	// VerifierKey is the public verifier key ("<name>+<hash>+<base64>") an
	// operator uses to check kept checkpoints (note.NewVerifier).
	VerifierKey string
}

// Parse parses a signer key and derives its verifier.
func Parse(skey string) (*Key, error) {
	skey = strings.TrimSpace(skey)
	s, err := note.NewSigner(skey)
	if err != nil {
		return nil, fmt.Errorf("checkpoint signer key: %w", err)
	}
	parts := strings.SplitN(skey, "+", 5) // the base64 key may contain '+'

	if len(parts) != 5 {
		return nil, errors.New("checkpoint signer key: malformed")
	}
	raw, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != algEd25519 {
		return nil, errors.New("checkpoint signer key: not an Ed25519 key")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(s.Name(), pub)
	if err != nil {
		return nil, fmt.Errorf("checkpoint verifier key: %w", err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("checkpoint verifier key: %w", err)
	}
	if v.KeyHash() != s.KeyHash() {
		return nil, errors.New("checkpoint signer key: key hash does not match the key")
	}
	return &Key{Signer: s, Verifier: v, VerifierKey: vkey}, nil
}

// Load reads and parses the signer key file at path.
func Load(path string) (*Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint signer key: %w", err)
	}
	return Parse(string(b))
}

// EnsureDev makes sure path holds a signer key: if the file is missing it
// generates an Ed25519 key named name, writes it (mode 0600, directories
// 0700) and writes the public verifier key beside it in path+".pub". An
// existing file is kept and must parse.
func EnsureDev(path, name string) error {
	if _, err := os.Stat(path); err == nil {
		_, err := Load(path)
		return err
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("checkpoint signer key: %w", err)
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		return fmt.Errorf("generate checkpoint signer key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("checkpoint signer key: %w", err)
	}
	// Write to a temporary file and rename, so a crash never leaves half a key.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(skey+"\n"), 0o600); err != nil {
		return fmt.Errorf("write checkpoint signer key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write checkpoint signer key: %w", err)
	}
	if err := os.WriteFile(path+".pub", []byte(vkey+"\n"), 0o644); err != nil {
		return fmt.Errorf("write checkpoint verifier key: %w", err)
	}
	return nil
}
