package blob

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Read opens blob id for reading its plaintext and returns its plaintext
// size: an encrypted blob is decrypted chunk by chunk as it is read (a
// chunk that does not authenticate ends the read with ErrTampered), a
// plaintext blob from before encryption is read as it is.
func (s *Store) Read(id string) (io.ReadCloser, int64, error) {
	f, err := s.Open(id)
	if err != nil {
		return nil, 0, err
	}
	rc, size, err := s.reader(f, id)
	if err != nil {
		_ = f.Close()
		return nil, 0, err
	}
	return rc, size, nil
}

func (s *Store) reader(f *os.File, id string) (io.ReadCloser, int64, error) {
	info, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	enc, h, err := isEncrypted(f)
	if err != nil {
		return nil, 0, err
	}
	if !enc {
		return f, info.Size(), nil
	}
	if s.keys == nil {
		return nil, 0, fmt.Errorf("blob %s is encrypted and no key-encryption key is configured", id)
	}
	size, chunks, err := plainSize(info.Size())
	if err != nil {
		return nil, 0, fmt.Errorf("blob %s: %w", id, err)
	}
	dek, err := s.keys.unwrap(h, id)
	if err != nil {
		return nil, 0, fmt.Errorf("blob %s: %w", id, err)
	}
	aead, err := dekAEAD(dek)
	if err != nil {
		return nil, 0, err
	}
	if _, err := f.Seek(int64(headerSize), io.SeekStart); err != nil {
		return nil, 0, err
	}
	return &opener{f: f, aead: aead, chunks: chunks, ct: make([]byte, ChunkSize+tagSize)}, size, nil
}

// Rewrap re-wraps blob id's data key under the keyring's current KEK,
// rewriting only its header (the bytes are not re-encrypted). It reports
// whether it changed anything: plaintext blobs and blobs already under the
// current KEK are left alone.
func (s *Store) Rewrap(id string) (bool, error) {
	if s.keys == nil {
		return false, errors.New("blob: no keyring")
	}
	p, err := s.path(id)
	if err != nil {
		return false, err
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("blob %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	enc, h, err := isEncrypted(f)
	if err != nil || !enc {
		return false, err
	}
	if string(h[len(magic):len(magic)+kekIDSize]) == string(s.keys.current.id[:]) {
		return false, nil
	}
	dek, err := s.keys.unwrap(h, id)
	if err != nil {
		return false, fmt.Errorf("blob %s: %w", id, err)
	}
	nh, err := s.keys.header(dek, id)
	if err != nil {
		return false, err
	}
	// The header is one 76-byte write within the first disk sector.
	if _, err := f.WriteAt(nh, 0); err != nil {
		return false, err
	}
	return true, f.Sync()
}

// RewrapAll re-wraps every blob under the current KEK and reports how many
// it changed.
func (s *Store) RewrapAll() (int, error) {
	n := 0
	err := filepath.WalkDir(s.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != s.dir && d.Name() == "tmp" {
				return filepath.SkipDir
			}
			return nil
		}
		if _, err := s.path(d.Name()); err != nil {
			return nil // not a blob
		}
		changed, err := s.Rewrap(d.Name())
		if err != nil {
			return err
		}
		if changed {
			n++
		}
		return nil
	})
	return n, err
}
