package domain

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"mime"
	"slices"
	"strings"
	"unicode/utf8"
)

// FileType is a kind of file the service accepts.
type FileType struct {
	// ContentType is the media type stored and served for it.
	ContentType string
	// Exts are the extensions a file name of this type may have (lower case,
	// with the dot); the first is the one added to a name that has none.
	Exts []string
	// Declared are media types a client may declare for it besides
	// ContentType's own (aliases that browsers and operating systems send).
	Declared []string
	// NeedsExt says a name without an extension is refused (plain text: only
	// .txt and .csv are text the practice expects).
	NeedsExt bool
}

// zipDeclared are what clients declare for ZIP-based documents besides their
// own type: the bytes are a ZIP, so these do not disagree with them.
var zipDeclared = []string{"application/zip", "application/x-zip-compressed"}

// The accepted types: images, PDFs and documents.
var (
	TypePNG  = FileType{ContentType: "image/png", Exts: []string{".png"}}
	TypeJPEG = FileType{ContentType: "image/jpeg", Exts: []string{".jpg", ".jpeg", ".jpe", ".jfif"}, Declared: []string{"image/jpg", "image/pjpeg"}}
	TypeGIF  = FileType{ContentType: "image/gif", Exts: []string{".gif"}}
	TypeWebP = FileType{ContentType: "image/webp", Exts: []string{".webp"}}
	TypeHEIC = FileType{ContentType: "image/heic", Exts: []string{".heic", ".heif", ".hif"}, Declared: []string{"image/heif", "image/heic-sequence", "image/heif-sequence"}}
	TypeHEIF = FileType{ContentType: "image/heif", Exts: []string{".heif", ".heic", ".hif"}, Declared: []string{"image/heic", "image/heif-sequence", "image/heic-sequence"}}
	TypePDF  = FileType{ContentType: "application/pdf", Exts: []string{".pdf"}, Declared: []string{"application/x-pdf"}}
	TypeRTF  = FileType{ContentType: "application/rtf", Exts: []string{".rtf"}, Declared: []string{"text/rtf", "application/x-rtf"}}
	TypeDOC  = FileType{ContentType: "application/msword", Exts: []string{".doc"}}
	TypeXLS  = FileType{ContentType: "application/vnd.ms-excel", Exts: []string{".xls"}}
	TypePPT  = FileType{ContentType: "application/vnd.ms-powerpoint", Exts: []string{".ppt"}}
	TypeDOCX = FileType{ContentType: "application/vnd.openxmlformats-officedocument.wordprocessingml.document", Exts: []string{".docx"}, Declared: zipDeclared}
	TypeXLSX = FileType{ContentType: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", Exts: []string{".xlsx"}, Declared: zipDeclared}
	TypePPTX = FileType{ContentType: "application/vnd.openxmlformats-officedocument.presentationml.presentation", Exts: []string{".pptx"}, Declared: zipDeclared}
	TypeODT  = FileType{ContentType: "application/vnd.oasis.opendocument.text", Exts: []string{".odt"}, Declared: zipDeclared}
	TypeODS  = FileType{ContentType: "application/vnd.oasis.opendocument.spreadsheet", Exts: []string{".ods"}, Declared: zipDeclared}
	TypeODP  = FileType{ContentType: "application/vnd.oasis.opendocument.presentation", Exts: []string{".odp"}, Declared: zipDeclared}
	TypeText = FileType{ContentType: "text/plain; charset=utf-8", Exts: []string{".txt"}, NeedsExt: true}
	// TypeCSV also allows application/vnd.ms-excel: Windows declares it for
	// every .csv where Excel is installed.
	TypeCSV = FileType{ContentType: "text/csv; charset=utf-8", Exts: []string{".csv"}, NeedsExt: true,
		Declared: []string{"text/plain", "application/csv", "text/x-csv", "application/vnd.ms-excel"}}
)

// family is what the first bytes say; ZIP, OLE2 and text need more of the
// file to name the exact type.
type family int

const (
	famNone family = iota
	famText
	famPNG
	famJPEG
	famGIF
	famWebP
	famHEIC
	famHEIF
	famPDF
	famRTF
	famOLE
	famZIP
)

// SniffBytes is how many leading bytes decide the family.
const SniffBytes = 512

var (
	sigPNG = []byte("\x89PNG\r\n\x1a\n")
	sigOLE = []byte{0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1}
	sigZIP = []byte("PK\x03\x04")
)

func familyOf(head []byte) family {
	switch {
	case bytes.HasPrefix(head, sigPNG):
		return famPNG
	case bytes.HasPrefix(head, []byte{0xFF, 0xD8, 0xFF}):
		return famJPEG
	case bytes.HasPrefix(head, []byte("GIF87a")), bytes.HasPrefix(head, []byte("GIF89a")):
		return famGIF
	case len(head) >= 12 && string(head[:4]) == "RIFF" && string(head[8:12]) == "WEBP":
		return famWebP
	case len(head) >= 12 && string(head[4:8]) == "ftyp":
		return heifFamily(head)
	case bytes.HasPrefix(head, []byte("%PDF-")):
		return famPDF
	case bytes.HasPrefix(head, []byte(`{\rtf`)):
		return famRTF
	case bytes.HasPrefix(head, sigOLE):
		return famOLE
	case bytes.HasPrefix(head, sigZIP):
		return famZIP
	}
	return famText // decided by the whole file: valid UTF-8 without NULs
}

// heifFamily reads an ISO-BMFF "ftyp" box: HEIC (HEVC-coded HEIF, what
// phones take) or generic HEIF. Other ISO-BMFF files (MP4, MOV, AVIF) are
// not accepted.
func heifFamily(head []byte) family {
	size := int(binary.BigEndian.Uint32(head[:4]))
	end := min(max(size, 16), len(head))
	brands := []string{string(head[8:12])}
	for i := 16; i+4 <= end; i += 4 {
		brands = append(brands, string(head[i:i+4]))
	}
	hevc := func(b string) bool {
		switch b {
		case "heic", "heix", "heim", "heis", "hevc", "hevx":
			return true
		}
		return false
	}
	if slices.ContainsFunc(brands, hevc) {
		return famHEIC
	}
	switch brands[0] {
	case "mif1", "msf1", "heif":
		if slices.Contains(brands, "avif") || slices.Contains(brands, "avis") {
			return famNone
		}
		return famHEIF
	}
	return famNone
}

// candidates are the types a family may turn out to be.
func (f family) candidates() []FileType {
	switch f {
	case famText:
		return []FileType{TypeText, TypeCSV}
	case famPNG:
		return []FileType{TypePNG}
	case famJPEG:
		return []FileType{TypeJPEG}
	case famGIF:
		return []FileType{TypeGIF}
	case famWebP:
		return []FileType{TypeWebP}
	case famHEIC:
		return []FileType{TypeHEIC}
	case famHEIF:
		return []FileType{TypeHEIF}
	case famPDF:
		return []FileType{TypePDF}
	case famRTF:
		return []FileType{TypeRTF}
	case famOLE:
		return []FileType{TypeDOC, TypeXLS, TypePPT}
	case famZIP:
		return []FileType{TypeDOCX, TypeXLSX, TypePPTX, TypeODT, TypeODS, TypeODP}
	}
	return nil
}

// Agrees reports whether a file of type t may carry filename and the
// client's declared Content-Type. A name without an extension agrees unless
// t needs one; an empty or application/octet-stream declaration says nothing.
func (t FileType) Agrees(filename, declared string) bool {
	ext := Ext(filename)
	switch {
	case ext == "" && t.NeedsExt:
		return false
	case ext != "" && !slices.Contains(t.Exts, ext):
		return false
	}
	if strings.TrimSpace(declared) == "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(declared)
	if err != nil {
		return false
	}
	switch mt {
	case "application/octet-stream", "binary/octet-stream":
		return true
	}
	own, _, _ := strings.Cut(t.ContentType, ";")
	return mt == own || slices.Contains(t.Declared, mt)
}

// WithExtension returns filename with t's usual extension added when it has
// none, so the downloaded file opens with the right program.
func WithExtension(filename string, t FileType) string {
	if Ext(filename) != "" {
		return filename
	}
	ext := t.Exts[0]
	return truncateUTF8(filename, MaxFilenameBytes-len(ext)) + ext
}

// Sniffer classifies a file from its bytes as they stream through Write,
// without holding the file: it keeps the first SniffBytes and checks on the
// fly whether the whole is valid UTF-8 text. ZIP and OLE2 containers are
// named by Finish, which reads their directory from the stored file.
type Sniffer struct {
	head   []byte
	size   int64
	text   textCheck
	markup markupCheck
}

// NewSniffer returns an empty sniffer.
func NewSniffer() *Sniffer {
	return &Sniffer{head: make([]byte, 0, SniffBytes), text: textCheck{ok: true}}
}

// Write implements io.Writer; it never fails.
func (s *Sniffer) Write(p []byte) (int, error) {
	if n := min(SniffBytes-len(s.head), len(p)); n > 0 {
		s.head = append(s.head, p[:n]...)
	}
	s.size += int64(len(p))
	// Both checks only matter for text: a file that is not (its first bytes
	// say another family, or it is not UTF-8 without NULs) is not scanned
	// further, which is most of the cost of a large binary upload.
	if s.text.ok && (len(s.head) < SniffBytes || familyOf(s.head) == famText) {
		s.text.write(p)
		if s.text.ok {
			s.markup.write(p)
		}
	} else {
		s.text.ok = false
	}
	return len(p), nil
}

// Ready reports whether enough bytes arrived for Check to decide.
func (s *Sniffer) Ready() bool { return len(s.head) >= SniffBytes }

// Check fails early, before the rest of the file arrives, when the first
// bytes are of no accepted type or disagree with the file name or the
// declared Content-Type. A file that passes may still fail Finish.
func (s *Sniffer) Check(filename, declared string) error {
	fam := familyOf(s.head)
	if fam == famText && (!s.text.ok || s.markup.found || looksActive(s.head)) {
		return ErrUnsupported
	}
	for _, t := range fam.candidates() {
		if t.Agrees(filename, declared) {
			return nil
		}
	}
	return ErrUnsupported
}

// Finish names the type of the whole file, of which r holds all the bytes
// written, and checks it against the file name and the declared type.
func (s *Sniffer) Finish(r io.ReaderAt, filename, declared string) (FileType, error) {
	if s.size == 0 {
		return FileType{}, ErrEmptyFile
	}
	var t FileType
	switch fam := familyOf(s.head); fam {
	case famNone:
		return FileType{}, ErrUnsupported
	case famText:
		if !s.text.valid() || s.markup.found || looksActive(s.head) {
			return FileType{}, ErrUnsupported
		}
		t = TypeText
		if Ext(filename) == ".csv" {
			t = TypeCSV
		}
	case famZIP:
		var ok bool
		if t, ok = zipType(r, s.size); !ok {
			return FileType{}, ErrUnsupported
		}
	case famOLE:
		var ok bool
		if t, ok = oleType(r, s.size); !ok {
			return FileType{}, ErrUnsupported
		}
	default:
		t = fam.candidates()[0]
	}
	if !t.Agrees(filename, declared) {
		return FileType{}, ErrUnsupported
	}
	return t, nil
}

// looksActive reports whether text starts like a document a browser or a
// shell would run: HTML (the WHATWG sniffing table's tags), SVG or XML, or a
// script with a "#!" line. Such a file is refused whatever its declared
// type or name: served back, it could run in someone's browser.
func looksActive(head []byte) bool {
	t := bytes.TrimLeft(bytes.TrimPrefix(head, []byte("\xEF\xBB\xBF")), " \t\r\n\f")
	if bytes.HasPrefix(t, []byte("#!")) {
		return true
	}
	if len(t) == 0 || t[0] != '<' {
		return false
	}
	low := bytes.ToLower(t[:min(len(t), 16)])
	for _, tag := range activeTags {
		if rest, ok := bytes.CutPrefix(low, []byte(tag)); ok {
			if tag == "<!--" || tag == "<?xml" || len(rest) == 0 || rest[0] == ' ' || rest[0] == '>' ||
				rest[0] == '\t' || rest[0] == '\n' || rest[0] == '\r' || rest[0] == '/' {
				return true
			}
		}
	}
	return false
}

// activeTags open an HTML, XML or SVG document (WHATWG MIME sniffing, plus
// XML and SVG).
var activeTags = []string{"<!doctype html", "<html", "<head", "<script", "<iframe", "<h1", "<div", "<font",
	"<table", "<a", "<style", "<title", "<b", "<body", "<br", "<p", "<!--", "<?xml", "<svg", "<object", "<embed"}

// markupNeedles are tags that make text a live document wherever they are.
var markupNeedles = [][]byte{[]byte("<script"), []byte("<svg"), []byte("<html"), []byte("<iframe"),
	[]byte("<!doctype html"), []byte("<object"), []byte("<embed")}

// markupCheck finds markupNeedles anywhere in a stream, ASCII
// case-insensitively (as browsers match tag names), across chunk boundaries,
// keeping only the last few bytes and one reused buffer.
type markupCheck struct {
	found bool
	tail  []byte
	buf   []byte
}

func (c *markupCheck) write(p []byte) {
	const keep = 15 // longest needle - 1
	for len(p) > 0 && !c.found {
		n := min(len(p), 64<<10)
		buf := append(append(c.buf[:0], c.tail...), p[:n]...)
		for i, b := range buf {
			if 'A' <= b && b <= 'Z' {
				buf[i] = b + ('a' - 'A')
			}
		}
		c.buf = buf
		for _, needle := range markupNeedles {
			if bytes.Contains(buf, needle) {
				c.found = true
				return
			}
		}
		c.tail = append(c.tail[:0], buf[max(0, len(buf)-keep):]...)
		p = p[n:]
	}
}

// textCheck validates UTF-8 across chunk boundaries and looks for NULs.
type textCheck struct {
	ok    bool
	carry []byte // the start of a character cut by the chunk boundary
}

func (c *textCheck) write(p []byte) {
	if !c.ok {
		return
	}
	if bytes.IndexByte(p, 0) >= 0 {
		c.ok = false
		return
	}
	// Complete a character left over from the previous chunk.
	for len(c.carry) > 0 && len(p) > 0 {
		c.carry = append(c.carry, p[0])
		p = p[1:]
		if utf8.FullRune(c.carry) {
			c.ok = utf8.Valid(c.carry)
			c.carry = c.carry[:0]
			if !c.ok {
				return
			}
		}
	}
	// Keep back a character cut by the end of this chunk.
	cut := len(p)
	for i := len(p) - 1; i >= 0 && i >= len(p)-utf8.UTFMax+1; i-- {
		if utf8.RuneStart(p[i]) {
			if !utf8.FullRune(p[i:]) {
				cut = i
			}
			break
		}
	}
	if !utf8.Valid(p[:cut]) {
		c.ok = false
		return
	}
	c.carry = append(c.carry, p[cut:]...)
}

// valid reports whether everything written was valid UTF-8 without NULs.
func (c *textCheck) valid() bool { return c.ok && len(c.carry) == 0 }

// zipType names a ZIP-based document: OpenDocument by its "mimetype" entry,
// Office Open XML by its [Content_Types].xml and main part. Macro-enabled
// Office files are refused. Only a bounded amount is decompressed.
func zipType(r io.ReaderAt, size int64) (FileType, bool) {
	if n, ok := zipEntries(r, size); !ok || n > maxZipEntries {
		return FileType{}, false
	}
	zr, err := zip.NewReader(r, size)
	if err != nil || len(zr.File) == 0 {
		return FileType{}, false
	}
	if first := zr.File[0]; first.Name == "mimetype" {
		mt, ok := readZipEntry(first, 256)
		if !ok {
			return FileType{}, false
		}
		switch strings.TrimSpace(string(mt)) {
		case "application/vnd.oasis.opendocument.text":
			return TypeODT, true
		case "application/vnd.oasis.opendocument.spreadsheet":
			return TypeODS, true
		case "application/vnd.oasis.opendocument.presentation":
			return TypeODP, true
		}
		return FileType{}, false
	}
	names := make(map[string]*zip.File, len(zr.File))
	for _, f := range zr.File {
		names[f.Name] = f
		base := f.Name[strings.LastIndexByte(f.Name, '/')+1:]
		if strings.EqualFold(base, "vbaProject.bin") {
			return FileType{}, false // macros
		}
	}
	ct, ok := names["[Content_Types].xml"]
	if !ok {
		return FileType{}, false
	}
	body, ok := readZipEntry(ct, 1<<20)
	if !ok || bytes.Contains(bytes.ToLower(body), []byte("macroenabled")) {
		return FileType{}, false
	}
	switch {
	case names["word/document.xml"] != nil:
		return TypeDOCX, true
	case names["xl/workbook.xml"] != nil:
		return TypeXLSX, true
	case names["ppt/presentation.xml"] != nil:
		return TypePPTX, true
	}
	return FileType{}, false
}

// maxZipEntries bounds the entries of a ZIP-based document (real ones have
// tens to hundreds), so a crafted archive of countless tiny entries cannot
// make the directory read take a lot of memory.
const maxZipEntries = 10000

// zipEntries reads the entry count from a ZIP's end-of-central-directory
// record, before archive/zip loads the directory. ZIP64 archives (more than
// 65,535 entries) are not documents.
func zipEntries(r io.ReaderAt, size int64) (int, bool) {
	const eocdLen, maxComment = 22, 65535
	n := min(size, eocdLen+maxComment)
	if n < eocdLen {
		return 0, false
	}
	tail := make([]byte, n)
	if _, err := r.ReadAt(tail, size-n); err != nil && !errors.Is(err, io.EOF) {
		return 0, false
	}
	i := bytes.LastIndex(tail, []byte("PK\x05\x06"))
	if i < 0 || len(tail)-i < eocdLen {
		return 0, false
	}
	total := binary.LittleEndian.Uint16(tail[i+10:])
	if total == 0xFFFF {
		return 0, false
	}
	return int(total), true
}

// readZipEntry returns f's content when it is at most limit bytes.
func readZipEntry(f *zip.File, limit int64) ([]byte, bool) {
	rc, err := f.Open()
	if err != nil {
		return nil, false
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil || int64(len(b)) > limit {
		return nil, false
	}
	return b, true
}

// oleType names a legacy Office file (an OLE2 compound file) by the streams
// its directory holds. Other compound files (installers, e-mails) and files
// with macro storage are refused.
func oleType(r io.ReaderAt, size int64) (FileType, bool) {
	names, err := cfbNames(r, size)
	if err != nil {
		return FileType{}, false
	}
	has := func(n string) bool { return slices.Contains(names, n) }
	if has("Macros") || has("_VBA_PROJECT_CUR") || has("VBA") {
		return FileType{}, false
	}
	switch {
	case has("WordDocument"):
		return TypeDOC, true
	case has("Workbook") || has("Book"):
		return TypeXLS, true
	case has("PowerPoint Document"):
		return TypePPT, true
	}
	return FileType{}, false
}
