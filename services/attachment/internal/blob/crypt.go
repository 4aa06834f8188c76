package blob

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Encrypted blob format (version 1). Each attachment has its own random
// 256-bit data key (DEK); its bytes are sealed with AES-256-GCM in chunks
// of ChunkSize, and the DEK is stored wrapped (AES-256-GCM) by the
// operator's key-encryption key (KEK) in the file's header:
//
//	magic    "CCBLOB1\n"                       8 bytes
//	kek id   first 8 bytes of SHA-256(KEK)     8 bytes
//	nonce    random, for the DEK wrap          12 bytes
//	wrapped  DEK sealed by the KEK             32+16 bytes (AAD: magic, kek id, blob id)
//	chunks   each ChunkSize bytes of plaintext sealed by the DEK: +16 bytes
//
// A chunk's nonce is its index (88 bits, big-endian) followed by one byte
// that is 1 on the final chunk and 0 otherwise: the DEK is never reused
// across files, so deterministic nonces are safe, and the final flag makes
// a truncated or extended file fail to open. The blob id in the wrap's AAD
// ties each header to its file. Rotating the KEK rewrites only the header
// (Rewrap). Files without the magic are plaintext blobs written before
// encryption, served as they are.
const (
	ChunkSize  = 64 << 10
	tagSize    = 16
	magic      = "CCBLOB1\n"
	kekIDSize  = 8
	headerSize = len(magic) + kekIDSize + 12 + 32 + tagSize
)

// ErrUnknownKEK: a blob was wrapped by a key-encryption key the keyring
// does not hold.
var ErrUnknownKEK = errors.New("blob: wrapped by an unknown key-encryption key")

// ErrTampered: an encrypted blob does not authenticate (changed, truncated or
// moved).
var ErrTampered = errors.New("blob: encrypted file does not authenticate")

// Keyring holds the current key-encryption key, which wraps new blobs' data
// keys, and previous ones, which still unwrap older blobs until Rewrap.
type Keyring struct {
	current kek
	byID    map[string]kek
}

type kek struct {
	id   [kekIDSize]byte
	aead cipher.AEAD
}

func newKEK(key []byte) (kek, error) {
	if len(key) != 32 {
		return kek{}, fmt.Errorf("a key-encryption key has 32 bytes, not %d", len(key))
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return kek{}, err
	}
	aead, err := cipher.NewGCM(b)
	if err != nil {
		return kek{}, err
	}
	k := kek{aead: aead}
	sum := sha256.Sum256(key)
	copy(k.id[:], sum[:])
	return k, nil
}

// NewKeyring returns a keyring whose current KEK is current; previous KEKs
// only unwrap.
func NewKeyring(current []byte, previous ...[]byte) (*Keyring, error) {
	c, err := newKEK(current)
	if err != nil {
		return nil, err
	}
	r := &Keyring{current: c, byID: map[string]kek{string(c.id[:]): c}}
	for _, p := range previous {
		k, err := newKEK(p)
		if err != nil {
			return nil, err
		}
		if _, ok := r.byID[string(k.id[:])]; !ok {
			r.byID[string(k.id[:])] = k
		}
	}
	return r, nil
}

// CurrentID is the current KEK's id (hex), for logs.
func (r *Keyring) CurrentID() string { return hex.EncodeToString(r.current.id[:]) }

// ParseKEK reads a key-encryption key: 32 raw bytes, or their base64 or hex
// encoding (surrounding whitespace ignored).
func ParseKEK(b []byte) ([]byte, error) {
	if len(b) == 32 {
		return b, nil
	}
	s := strings.TrimSpace(string(b))
	for _, dec := range []func(string) ([]byte, error){base64.StdEncoding.DecodeString, base64.RawStdEncoding.DecodeString,
		base64.URLEncoding.DecodeString, base64.RawURLEncoding.DecodeString, hex.DecodeString} {
		if k, err := dec(s); err == nil && len(k) == 32 {
			return k, nil
		}
	}
	return nil, errors.New("a key-encryption key is 32 bytes, raw or base64 or hex encoded")
}

// ReadKEKFile reads a key-encryption key file (ParseKEK).
func ReadKEKFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := ParseKEK(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// GenerateKEKFile writes a new random KEK (base64) to path with mode 0600,
// unless path exists. It reports whether it wrote one.
func GenerateKEKFile(path string) (bool, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return false, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if _, err := f.WriteString(base64.StdEncoding.EncodeToString(key) + "\n"); err != nil {
		_ = f.Close()
		return false, err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return false, err
	}
	return true, f.Close()
}

func wrapAAD(id []byte, blobID string) []byte {
	return append(append([]byte(magic), id...), blobID...)
}

// header seals dek for blobID under the current KEK.
func (r *Keyring) header(dek []byte, blobID string) ([]byte, error) {
	h := make([]byte, 0, headerSize)
	h = append(h, magic...)
	h = append(h, r.current.id[:]...)
	nonce := make([]byte, 12)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	h = append(h, nonce...)
	h = r.current.aead.Seal(h, nonce, dek, wrapAAD(r.current.id[:], blobID))
	return h, nil
}

// unwrap opens a header's DEK.
func (r *Keyring) unwrap(h []byte, blobID string) ([]byte, error) {
	if len(h) != headerSize || string(h[:len(magic)]) != magic {
		return nil, ErrTampered
	}
	id := h[len(magic) : len(magic)+kekIDSize]
	k, ok := r.byID[string(id)]
	if !ok {
		return nil, fmt.Errorf("%w (id %x)", ErrUnknownKEK, id)
	}
	nonce := h[len(magic)+kekIDSize : len(magic)+kekIDSize+12]
	dek, err := k.aead.Open(nil, nonce, h[len(magic)+kekIDSize+12:], wrapAAD(id, blobID))
	if err != nil {
		return nil, ErrTampered
	}
	return dek, nil
}

func chunkNonce(i int64, final bool) []byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[3:11], uint64(i))
	if final {
		n[11] = 1
	}
	return n[:]
}

func newDEK() ([]byte, cipher.AEAD, error) {
	dek := make([]byte, 32)
	if _, err := rand.Read(dek); err != nil {
		return nil, nil, err
	}
	aead, err := dekAEAD(dek)
	return dek, aead, err
}

func dekAEAD(dek []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(dek)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// sealer encrypts a blob being written. The current chunk is held back
// until more bytes arrive (then it is sealed as not final) or until finish
// (sealed as final), so memory stays at one chunk whatever the file's size.
type sealer struct {
	f      *os.File
	w      *bufio.Writer // sealed chunks, WriteBatch bytes per write(2)
	dek    []byte
	aead   cipher.AEAD
	buf    []byte // plaintext of the current chunk (len <= ChunkSize)
	out    []byte // ciphertext scratch
	sealed int64  // chunks written
	size   int64  // plaintext bytes so far
}

func newSealer(f *os.File) (*sealer, error) {
	dek, aead, err := newDEK()
	if err != nil {
		return nil, err
	}
	// The header is written at finish, when the blob id is known.
	if _, err := f.Write(make([]byte, headerSize)); err != nil {
		return nil, err
	}
	return &sealer{f: f, w: bufio.NewWriterSize(f, WriteBatch), dek: dek, aead: aead,
		buf: make([]byte, 0, ChunkSize), out: make([]byte, 0, ChunkSize+tagSize)}, nil
}

// WriteBatch is how many bytes of sealed chunks go to the file at once: a
// 25 MiB upload takes ~100 writes instead of ~400.
const WriteBatch = 256 << 10

func (s *sealer) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if len(s.buf) == ChunkSize {
			if err := s.seal(false); err != nil {
				return n - len(p), err
			}
		}
		k := copy(s.buf[len(s.buf):ChunkSize], p)
		s.buf = s.buf[:len(s.buf)+k]
		p = p[k:]
		s.size += int64(k)
	}
	return n, nil
}

func (s *sealer) seal(final bool) error {
	s.out = s.aead.Seal(s.out[:0], chunkNonce(s.sealed, final), s.buf, nil)
	if _, err := s.w.Write(s.out); err != nil {
		return err
	}
	s.sealed++
	s.buf = s.buf[:0]
	return nil
}

// finish seals the last chunk and writes the header for blobID.
func (s *sealer) finish(r *Keyring, blobID string) error {
	if err := s.seal(true); err != nil {
		return err
	}
	if err := s.w.Flush(); err != nil {
		return err
	}
	h, err := r.header(s.dek, blobID)
	if err != nil {
		return err
	}
	_, err = s.f.WriteAt(h, 0)
	return err
}

// ReadAt reads plaintext written so far (for sniffing a container's
// directory before the blob is committed).
func (s *sealer) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("blob: negative offset")
	}
	if err := s.w.Flush(); err != nil { // the sealed chunks, on file
		return 0, err
	}
	total := 0
	ct := make([]byte, ChunkSize+tagSize)
	for len(p) > 0 {
		if off >= s.size {
			return total, io.EOF
		}
		i := off / ChunkSize
		within := off % ChunkSize
		var plain []byte
		if i == s.sealed {
			plain = s.buf
		} else {
			if _, err := s.f.ReadAt(ct, int64(headerSize)+i*(ChunkSize+tagSize)); err != nil {
				return total, err
			}
			var err error
			if plain, err = s.aead.Open(nil, chunkNonce(i, false), ct, nil); err != nil {
				return total, ErrTampered
			}
		}
		k := copy(p, plain[within:])
		p, off, total = p[k:], off+int64(k), total+k
	}
	return total, nil
}

// plainSize is the plaintext size of an encrypted file of fileSize bytes.
func plainSize(fileSize int64) (int64, int64, error) {
	body := fileSize - int64(headerSize)
	if body < tagSize {
		return 0, 0, ErrTampered
	}
	chunks := (body + ChunkSize + tagSize - 1) / (ChunkSize + tagSize)
	size := body - chunks*tagSize
	if size < 0 || (chunks > 1 && size <= (chunks-1)*ChunkSize) {
		return 0, 0, ErrTampered
	}
	return size, chunks, nil
}

// opener decrypts an encrypted blob chunk by chunk.
type opener struct {
	f      *os.File
	aead   cipher.AEAD
	chunks int64
	next   int64
	ct     []byte
	plain  []byte
	rest   []byte
	err    error
}

func (o *opener) Read(p []byte) (int, error) {
	for len(o.rest) == 0 {
		if o.err != nil {
			return 0, o.err
		}
		if o.next == o.chunks {
			o.err = io.EOF
			return 0, io.EOF
		}
		n, err := io.ReadFull(o.f, o.ct)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			o.err = ErrTampered
			return 0, o.err
		}
		final := o.next == o.chunks-1
		if (n == len(o.ct)) == false && !final {
			o.err = ErrTampered
			return 0, o.err
		}
		o.plain, err = o.aead.Open(o.plain[:0], chunkNonce(o.next, final), o.ct[:n], nil)
		if err != nil {
			o.err = ErrTampered
			return 0, o.err
		}
		o.next++
		o.rest = o.plain
	}
	k := copy(p, o.rest)
	o.rest = o.rest[k:]
	return k, nil
}

func (o *opener) Close() error { return o.f.Close() }

// isEncrypted reports whether f starts with the encrypted blob magic.
func isEncrypted(f *os.File) (bool, []byte, error) {
	h := make([]byte, headerSize)
	n, err := f.ReadAt(h, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, nil, err
	}
	return n == headerSize && bytes.Equal(h[:len(magic)], []byte(magic)), h, nil
}
