// Package testfiles builds small, well-formed files of every accepted type
// (and some refused ones) for the attachment service's tests. Only tests
// import it.
package testfiles

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"unicode/utf16"
)

func img() image.Image {
	m := image.NewRGBA(image.Rect(0, 0, 16, 16))
	for x := range 16 {
		for y := range 16 {
			m.Set(x, y, color.RGBA{uint8(x * 16), uint8(y * 16), 128, 255})
		}
	}
	return m
}

// PNG is a 16×16 PNG image.
func PNG() []byte {
	var b bytes.Buffer
	_ = png.Encode(&b, img())
	return b.Bytes()
}

// JPEG is a 16×16 JPEG image.
func JPEG() []byte {
	var b bytes.Buffer
	_ = jpeg.Encode(&b, img(), nil)
	return b.Bytes()
}

// GIF is a 16×16 GIF image.
func GIF() []byte {
	var b bytes.Buffer
	_ = gif.Encode(&b, img(), nil)
	return b.Bytes()
}

// WebP is the header of a WebP image (RIFF....WEBPVP8 ) with some payload.
func WebP() []byte {
	b := []byte("RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00")
	return append(b, bytes.Repeat([]byte{0x2f}, 24)...)
}

// HEIC is the start of an iPhone photo: an ftyp box with brand heic, then an
// (empty) meta box.
func HEIC() []byte {
	b := []byte("\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
	return append(b, []byte("\x00\x00\x00\x08meta")...)
}

// MP4 is the start of an MP4 video (ISO-BMFF but not HEIF).
func MP4() []byte {
	return []byte("\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2\x00\x00\x00\x08free")
}

// PDF is a minimal one-page PDF.
func PDF() []byte {
	return []byte("%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n" +
		"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n" +
		"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]>>endobj\n" +
		"trailer<</Root 1 0 R>>\n%%EOF\n")
}

// RTF is a minimal RTF document.
func RTF() []byte { return []byte(`{\rtf1\ansi{\fonttbl\f0\fswiss Helvetica;}\f0\pard Hello\par}`) }

// Text is plain UTF-8 text with accents and an emoji.
func Text() []byte { return []byte("Post-op care: rinse gently. Café ✓ 🦷\n") }

// Executable is the start of a Windows executable (MZ header with NULs).
func Executable() []byte {
	b := make([]byte, 1024)
	copy(b, "MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff")
	copy(b[0x80:], "PE\x00\x00")
	return b
}

// Zip writes a ZIP archive of the given entries, in order.
func Zip(entries ...[2]string) []byte {
	var b bytes.Buffer
	w := zip.NewWriter(&b)
	for _, e := range entries {
		method := zip.Deflate
		if e[0] == "mimetype" {
			method = zip.Store // OpenDocument: stored, first
		}
		f, _ := w.CreateHeader(&zip.FileHeader{Name: e[0], Method: method})
		_, _ = io.WriteString(f, e[1])
	}
	_ = w.Close()
	return b.Bytes()
}

const contentTypes = `<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">` +
	`<Default Extension="xml" ContentType="application/xml"/>` +
	`<Override PartName="%s" ContentType="%s"/></Types>`

func ooxml(part, partType, body string) []byte {
	ct := bytes.Replace([]byte(contentTypes), []byte("%s"), []byte(part), 1)
	ct = bytes.Replace(ct, []byte("%s"), []byte(partType), 1)
	return Zip([2]string{"[Content_Types].xml", string(ct)},
		[2]string{"_rels/.rels", `<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"/>`},
		[2]string{part[1:], body})
}

// DOCX is a minimal Word document.
func DOCX() []byte {
	return ooxml("/word/document.xml", "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml",
		`<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>Hi</w:t></w:r></w:p></w:body></w:document>`)
}

// DOCM is a macro-enabled Word document.
func DOCM() []byte {
	return ooxml("/word/document.xml", "application/vnd.ms-word.document.macroEnabled.main+xml", `<w:document/>`)
}

// XLSX is a minimal Excel workbook.
func XLSX() []byte {
	return ooxml("/xl/workbook.xml", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml", `<workbook/>`)
}

// PPTX is a minimal PowerPoint presentation.
func PPTX() []byte {
	return ooxml("/ppt/presentation.xml", "application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml", `<presentation/>`)
}

// ODT is a minimal OpenDocument text.
func ODT() []byte {
	return Zip([2]string{"mimetype", "application/vnd.oasis.opendocument.text"},
		[2]string{"content.xml", `<office:document-content/>`})
}

// PlainZip is a ZIP archive that is no document.
func PlainZip() []byte { return Zip([2]string{"notes.txt", "hello"}) }

// CFB is a compound file (OLE2) with one stream or storage per name.
func CFB(names ...string) []byte {
	const ssz = 512
	le := binary.LittleEndian
	h := make([]byte, ssz)
	copy(h, []byte{0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1})
	le.PutUint16(h[24:], 0x3E)
	le.PutUint16(h[26:], 3)
	le.PutUint16(h[28:], 0xFFFE)
	le.PutUint16(h[30:], 9)
	le.PutUint16(h[32:], 6)
	le.PutUint32(h[44:], 1)          // one FAT sector
	le.PutUint32(h[48:], 1)          // directory at sector 1
	le.PutUint32(h[56:], 4096)       // mini stream cutoff
	le.PutUint32(h[60:], 0xFFFFFFFE) // no mini FAT
	le.PutUint32(h[68:], 0xFFFFFFFE) // no DIFAT sectors
	for i := range 109 {
		le.PutUint32(h[76+4*i:], 0xFFFFFFFF)
	}
	le.PutUint32(h[76:], 0) // the FAT is sector 0

	fat := make([]byte, ssz)
	for i := 0; i < ssz; i += 4 {
		le.PutUint32(fat[i:], 0xFFFFFFFF)
	}
	le.PutUint32(fat[0:], 0xFFFFFFFD) // FAT sector
	le.PutUint32(fat[4:], 0xFFFFFFFE) // directory: one sector

	dir := make([]byte, ssz)
	entry := func(i int, name string, typ byte) {
		e := dir[i*128 : (i+1)*128]
		u := utf16.Encode([]rune(name))
		for j, c := range u {
			le.PutUint16(e[2*j:], c)
		}
		le.PutUint16(e[64:], uint16(2*len(u)+2))
		e[66] = typ
		le.PutUint32(e[68:], 0xFFFFFFFF)
		le.PutUint32(e[72:], 0xFFFFFFFF)
		le.PutUint32(e[76:], 0xFFFFFFFF)
		le.PutUint32(e[116:], 0xFFFFFFFE)
	}
	entry(0, "Root Entry", 5)
	for i, n := range names[:min(len(names), 3)] {
		entry(i+1, n, 2)
	}
	return append(append(h, fat...), dir...)
}

// DOC is a legacy Word document (its directory only).
func DOC() []byte { return CFB("WordDocument", "1Table") }

// XLS is a legacy Excel workbook (its directory only).
func XLS() []byte { return CFB("Workbook") }

// MSI is a compound file that is no document (an installer's tables).
func MSI() []byte { return CFB("\u4840\u3f3f\u4577") }

// CraftedDOC is a hostile compound file of the given number of 512-byte
// sectors after its header, named like a Word document: it declares one FAT
// sector per sector of the file (all the same zero-filled sector, listed by
// a DIFAT sector that points to itself), so its FAT is sectors×128 entries
// long, and its directory chain loops on one sector forever. A reader that
// bounds the directory walk by the FAT's length instead of the file's
// sectors does millions of reads.
func CraftedDOC(sectors int) []byte {
	const ssz = 512
	le := binary.LittleEndian
	out := make([]byte, ssz*(sectors+1))
	h := out[:ssz]
	copy(h, []byte{0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1})
	le.PutUint16(h[24:], 0x3E)
	le.PutUint16(h[26:], 3)
	le.PutUint16(h[28:], 0xFFFE)
	le.PutUint16(h[30:], 9)
	le.PutUint16(h[32:], 6)
	le.PutUint32(h[44:], uint32(sectors)) // as many FAT sectors as the file has
	le.PutUint32(h[48:], 1)               // directory at sector 1
	le.PutUint32(h[56:], 4096)
	le.PutUint32(h[60:], 0xFFFFFFFE)
	le.PutUint32(h[68:], 0) // the DIFAT chain starts at sector 0
	for i := range 109 {
		le.PutUint32(h[76+4*i:], 1) // every FAT sector is sector 1 (zeros)
	}
	difat := out[ssz : 2*ssz] // sector 0
	for i := 0; i < ssz-4; i += 4 {
		le.PutUint32(difat[i:], 1)
	}
	le.PutUint32(difat[ssz-4:], 0) // next DIFAT sector: itself
	return out
}
