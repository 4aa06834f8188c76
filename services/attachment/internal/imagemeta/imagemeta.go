// Package imagemeta strips metadata from images as they stream through,
// without decoding or re-encoding their pixels: patients' photos carry GPS
// positions, device serial numbers and capture times in EXIF, XMP, IPTC and
// text chunks, and none of that belongs in a chat attachment.
//
//   - JPEG: APP1 (EXIF, XMP), APP13 (IPTC/Photoshop), COM and every other
//     APPn segment are dropped, except APP0 (JFIF), APP2 ICC_PROFILE (colour)
//     and APP14 (Adobe colour transform), which decoding needs; anything after
//     EOI (trailing data, MPF secondary images with their own EXIF) is
//     dropped.
//   - PNG: tEXt, zTXt, iTXt, eXIf and tIME chunks are dropped, and anything
//     after IEND.
//
// Other bytes pass through unchanged. Memory is bounded by one JPEG segment
// (at most 64 KiB) whatever the image's size.
package imagemeta

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
)

// ErrMalformed: an image whose structure cannot be walked (a segment or
// chunk length that does not fit), so its metadata cannot be removed.
var ErrMalformed = errors.New("imagemeta: malformed image structure")

var (
	jpegMagic = []byte{0xFF, 0xD8, 0xFF}
	pngMagic  = []byte("\x89PNG\r\n\x1a\n")
)

// Stripper is an io.WriteCloser that writes to dst what is written to it,
// less image metadata. Close flushes; call it after the last Write.
type Stripper struct {
	dst  io.Writer
	head []byte // the first bytes, until the format is known
	f    filter
	err  error
	n    int64 // bytes written to dst
}

type filter interface {
	write(p []byte) error
	close() error
}

// NewStripper returns a Stripper writing to dst.
func NewStripper(dst io.Writer) *Stripper { return &Stripper{dst: dst} }

// Written is how many bytes went to dst.
func (s *Stripper) Written() int64 { return s.n }

func (s *Stripper) out(p []byte) error {
	n, err := s.dst.Write(p)
	s.n += int64(n)
	return err
}

// Write implements io.Writer.
func (s *Stripper) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.f == nil {
		need := len(pngMagic) - len(s.head)
		take := min(need, len(p))
		s.head = append(s.head, p[:take]...)
		if len(s.head) < len(pngMagic) {
			return len(p), nil
		}
		s.f = s.choose()
		if s.err = s.f.write(s.head); s.err != nil {
			return 0, s.err
		}
		p = p[take:]
		if s.err = s.f.write(p); s.err != nil {
			return 0, s.err
		}
		return take + len(p), nil
	}
	if s.err = s.f.write(p); s.err != nil {
		return 0, s.err
	}
	return len(p), nil
}

// Close flushes what is held back.
func (s *Stripper) Close() error {
	if s.err != nil {
		return s.err
	}
	if s.f == nil { // fewer bytes than any image header: not an image
		s.err = s.out(s.head)
		return s.err
	}
	s.err = s.f.close()
	return s.err
}

func (s *Stripper) choose() filter {
	switch {
	case bytes.HasPrefix(s.head, jpegMagic):
		return &jpegFilter{s: s}
	case bytes.HasPrefix(s.head, pngMagic):
		return &pngFilter{s: s}
	}
	return passFilter{s: s}
}

type passFilter struct{ s *Stripper }

func (f passFilter) write(p []byte) error { return f.s.out(p) }
func (f passFilter) close() error         { return nil }

// jpegFilter walks JPEG markers. Between markers it is in one of these
// states: reading a marker (after 0xFF), reading a segment (header and
// body, buffered up to 64 KiB), in entropy-coded data after SOS (passed
// through, scanning for the next marker), or done (after EOI: dropped).
type jpegFilter struct {
	s     *Stripper
	state int
	buf   []byte // the marker and segment being read
	need  int    // bytes of the segment still to read (state segBody)
	ff    bool   // entropy data: the previous byte was 0xFF
}

const (
	jMarker  = iota // expecting 0xFF then a marker byte (buf holds what was read)
	jSegLen         // buf holds FF xx, reading the 2 length bytes
	jSegBody        // reading need more bytes into buf
	jScan           // entropy-coded data
	jDone           // after EOI
)

func keepSegment(marker byte, body []byte) bool {
	switch {
	case marker == 0xFE: // COM
		return false
	case marker == 0xE0, marker == 0xEE: // APP0 JFIF, APP14 Adobe
		return true
	case marker == 0xE2: // APP2: only the ICC colour profile
		return bytes.HasPrefix(body, []byte("ICC_PROFILE\x00"))
	case marker >= 0xE1 && marker <= 0xEF: // APP1 EXIF/XMP, APP13 IPTC, others
		return false
	}
	return true
}

func (f *jpegFilter) write(p []byte) error {
	for len(p) > 0 {
		switch f.state {
		case jDone:
			return nil
		case jScan:
			// Pass entropy-coded data through up to the next marker.
			i := 0
			if f.ff {
				// The 0xFF before p[0] was held back.
				b := p[0]
				if b == 0x00 || (b >= 0xD0 && b <= 0xD7) || b == 0xFF {
					if err := f.s.out([]byte{0xFF}); err != nil {
						return err
					}
					f.ff = b == 0xFF
					if b == 0xFF {
						p = p[1:]
						continue
					}
				} else {
					f.ff = false
					f.state = jMarker
					f.buf = append(f.buf[:0], 0xFF)
					continue
				}
			}
			for {
				j := bytes.IndexByte(p[i:], 0xFF)
				if j < 0 {
					if err := f.s.out(p); err != nil {
						return err
					}
					p = nil
					break
				}
				j += i
				if j+1 >= len(p) { // 0xFF at the end: hold it back
					if err := f.s.out(p[:j]); err != nil {
						return err
					}
					f.ff = true
					p = nil
					break
				}
				b := p[j+1]
				if b == 0x00 || (b >= 0xD0 && b <= 0xD7) {
					i = j + 2
					continue
				}
				if b == 0xFF { // fill byte before a marker
					i = j + 1
					continue
				}
				if err := f.s.out(p[:j]); err != nil {
					return err
				}
				f.state = jMarker
				f.buf = append(f.buf[:0], 0xFF)
				p = p[j+1:]
				break
			}
		case jMarker:
			b := p[0]
			p = p[1:]
			if len(f.buf) == 0 {
				if b != 0xFF {
					return ErrMalformed
				}
				f.buf = append(f.buf, b)
				continue
			}
			if b == 0xFF { // fill
				continue
			}
			f.buf = append(f.buf[:1], b)
			switch {
			case b == 0xD8 || b == 0x01 || (b >= 0xD0 && b <= 0xD7): // SOI, TEM, RSTn: no length
				if err := f.s.out(f.buf); err != nil {
					return err
				}
				f.buf = f.buf[:0]
			case b == 0xD9: // EOI
				if err := f.s.out(f.buf); err != nil {
					return err
				}
				f.state = jDone
			case b == 0x00:
				return ErrMalformed
			default:
				f.state = jSegLen
			}
		case jSegLen:
			f.buf = append(f.buf, p[0])
			p = p[1:]
			if len(f.buf) == 4 {
				n := int(binary.BigEndian.Uint16(f.buf[2:4]))
				if n < 2 {
					return ErrMalformed
				}
				f.need = n - 2
				f.state = jSegBody
				if f.need == 0 {
					if err := f.endSegment(); err != nil {
						return err
					}
				}
			}
		case jSegBody:
			take := min(f.need, len(p))
			f.buf = append(f.buf, p[:take]...)
			p = p[take:]
			f.need -= take
			if f.need == 0 {
				if err := f.endSegment(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (f *jpegFilter) endSegment() error {
	marker := f.buf[1]
	if keepSegment(marker, f.buf[4:]) {
		if err := f.s.out(f.buf); err != nil {
			return err
		}
	}
	f.buf = f.buf[:0]
	if marker == 0xDA { // SOS: entropy-coded data follows
		f.state = jScan
	} else {
		f.state = jMarker
	}
	return nil
}

func (f *jpegFilter) close() error {
	switch f.state {
	case jScan:
		if f.ff {
			return f.s.out([]byte{0xFF})
		}
	case jSegLen, jSegBody:
		// A truncated file: keep what was read of a segment we would keep.
		if len(f.buf) >= 2 && keepSegment(f.buf[1], nil) {
			return f.s.out(f.buf)
		}
	case jMarker:
		return f.s.out(f.buf)
	}
	return nil
}

// pngFilter walks PNG chunks: the 8-byte signature, then length, type,
// data and CRC; kept chunks stream through, dropped ones are skipped.
type pngFilter struct {
	s    *Stripper
	sig  bool
	hdr  []byte // the 8 bytes of length and type being read
	rest int64  // bytes of the current chunk (data and CRC) still to pass or skip
	drop bool
	iend bool // the current chunk is IEND: nothing after it is kept
	done bool
}

var pngDrop = map[string]bool{"tEXt": true, "zTXt": true, "iTXt": true, "eXIf": true, "tIME": true}

func (f *pngFilter) write(p []byte) error {
	if !f.sig {
		// Stripper passes the whole signature in the first call.
		if err := f.s.out(p[:len(pngMagic)]); err != nil {
			return err
		}
		f.sig = true
		p = p[len(pngMagic):]
	}
	for len(p) > 0 && !f.done {
		if f.rest > 0 {
			take := int(min(f.rest, int64(len(p))))
			if !f.drop {
				if err := f.s.out(p[:take]); err != nil {
					return err
				}
			}
			p = p[take:]
			f.rest -= int64(take)
			if f.rest == 0 && f.iend {
				f.done = true
			}
			continue
		}
		take := min(8-len(f.hdr), len(p))
		f.hdr = append(f.hdr, p[:take]...)
		p = p[take:]
		if len(f.hdr) < 8 {
			continue
		}
		n := int64(binary.BigEndian.Uint32(f.hdr[:4]))
		if n > 1<<31-1 {
			return ErrMalformed
		}
		typ := string(f.hdr[4:8])
		f.drop = pngDrop[typ]
		f.rest = n + 4
		if !f.drop {
			if err := f.s.out(f.hdr); err != nil {
				return err
			}
		}
		f.hdr = f.hdr[:0]
		f.iend = typ == "IEND"
	}
	return nil
}

func (f *pngFilter) close() error {
	if len(f.hdr) > 0 && !f.done {
		return f.s.out(f.hdr)
	}
	return nil
}
