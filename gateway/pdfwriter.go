package gateway

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/go-pdf/fpdf"
)

// A PDF of a whole thread must not cost memory in proportion to the thread:
// the thread's size is bounded only by time. Go's PDF libraries (go-pdf/fpdf,
// signintech/gopdf, pdfcpu) all build the whole document in memory before the
// first byte goes out (fpdf keeps every page's content and then the whole
// output in buffers). The PDF format itself is written front to back: objects,
// then a table of their offsets. So streamPDF writes text pages itself, one
// page in memory at a time, and takes from fpdf what is hard to get right:
// the standard fonts' glyph widths (for wrapping) and the translation of text
// to the fonts' Windows-1252 encoding. What grows with the thread goes to
// temporary files, unlinked at once and holding no PHI: the offset table (20
// bytes per PDF object) and, in pageTokens, the service's page tokens (a few
// bytes per 200 messages).

// A4 in points, and the layout's margins.
const (
	pdfPageW   = 595.28
	pdfPageH   = 841.89
	pdfMargin  = 42.52 // 15 mm
	pdfBottom  = 56.69 // 20 mm: room for the footer
	pdfTextW   = pdfPageW - 2*pdfMargin
	pdfObjFont = 3 // first font object; fonts are 3..6
)

// pdfFonts are the standard fonts the document uses, by resource name.
var pdfFonts = []struct{ res, base, style string }{
	{"F1", "Helvetica", ""}, {"F2", "Helvetica-Bold", "B"}, {"F3", "Helvetica-Oblique", "I"}, {"F4", "Helvetica-BoldOblique", "BI"},
}

// countingWriter counts the bytes written, for the offset table.
type countingWriter struct {
	w   *bufio.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}

func (c *countingWriter) printf(format string, args ...any) { _, _ = fmt.Fprintf(c, format, args...) }

// streamPDF writes a text-only A4 document page by page.
type streamPDF struct {
	out     *countingWriter
	xref    *os.File // object n's 20-byte offset entry at (n-1)*20
	nobj    int
	pages   int
	page    bytes.Buffer // the current page's content stream, uncompressed
	y       float64      // the next line's top, from the top of the page
	metrics *fpdf.Fpdf   // font metrics only: never given a page
	tr      func(string) string
	onPage  func() // called after each page is written (flush, write deadline)
	zbuf    bytes.Buffer
	zw      *zlib.Writer // reused for every page
}

// newStreamPDF starts a document on w: the header, catalog, fonts and info.
func newStreamPDF(w io.Writer, title string, onPage func()) (*streamPDF, error) {
	xref, err := os.CreateTemp("", "clinicchat-pdf-xref-*")
	if err != nil {
		return nil, fmt.Errorf("pdf offset table: %w", err)
	}
	_ = os.Remove(xref.Name()) // gone when closed, whatever happens
	metrics := fpdf.New("P", "pt", "A4", "")
	p := &streamPDF{
		out: &countingWriter{w: bufio.NewWriterSize(w, 32<<10)}, xref: xref, metrics: metrics,
		tr: metrics.UnicodeTranslatorFromDescriptor(""), onPage: onPage,
	}
	p.out.printf("%%PDF-1.4\n%%\xe2\xe3\xcf\xd3\n")
	p.object(1, "<< /Type /Catalog /Pages 2 0 R >>")
	p.nobj = 2 // 2 is the page tree, written last
	for _, f := range pdfFonts {
		p.object(p.next(), "<< /Type /Font /Subtype /Type1 /BaseFont /"+f.base+" /Encoding /WinAnsiEncoding >>")
	}
	p.object(p.next(), "<< /Title "+pdfString(p.tr(title))+" /Creator (clinicchat) /Producer (clinicchat) >>")
	return p, p.out.err
}

func (p *streamPDF) next() int { p.nobj++; return p.nobj }

// object writes object n with its offset in the table.
func (p *streamPDF) object(n int, body string) {
	p.offset(n)
	p.out.printf("%d 0 obj\n%s\nendobj\n", n, body)
}

func (p *streamPDF) offset(n int) {
	if _, err := p.xref.WriteAt([]byte(fmt.Sprintf("%010d 00000 n \n", p.out.n)), int64(n-1)*20); err != nil && p.out.err == nil {
		p.out.err = fmt.Errorf("pdf offset table: %w", err)
	}
}

// pdfEscape escapes a PDF literal string's delimiters.
var pdfEscape = strings.NewReplacer(`\`, `\\`, "(", `\(`, ")", `\)`, "\r", `\r`)

// pdfString is a PDF literal string of Windows-1252 bytes.
func pdfString(s string) string { return "(" + pdfEscape.Replace(s) + ")" }

// fontFor sets the metrics font and returns its resource name.
func (p *streamPDF) fontFor(style string, size float64) string {
	p.metrics.SetFont("Helvetica", style, size)
	for _, f := range pdfFonts {
		if f.style == style {
			return f.res
		}
	}
	return "F1"
}

// wrap splits Windows-1252 text into lines at most width wide, breaking at
// spaces, and inside a word only when the word alone is wider.
func (p *streamPDF) wrap(text string, width float64) []string {
	var lines []string
	for _, para := range strings.Split(strings.ReplaceAll(text, "\r", ""), "\n") {
		line := ""
		for _, word := range strings.Split(para, " ") {
			try := word
			if line != "" {
				try = line + " " + word
			}
			if p.metrics.GetStringWidth(try) <= width {
				line = try
				continue
			}
			if line != "" {
				lines = append(lines, line)
			}
			for p.metrics.GetStringWidth(word) > width && len(word) > 1 {
				cut := len(word) - 1
				for cut > 1 && p.metrics.GetStringWidth(word[:cut]) > width {
					cut = cut * 3 / 4
				}
				for cut+1 < len(word) && p.metrics.GetStringWidth(word[:cut+1]) <= width {
					cut++
				}
				lines = append(lines, word[:cut])
				word = word[cut:]
			}
			line = word
		}
		lines = append(lines, line)
	}
	return lines
}

// text writes UTF-8 text in the style, wrapped, leading points per line,
// starting new pages as needed.
func (p *streamPDF) text(style string, size, leading float64, text string) {
	res := p.fontFor(style, size)
	for _, line := range p.wrap(p.tr(text), pdfTextW) {
		p.space(leading)
		fmt.Fprintf(&p.page, "BT /%s %.1f Tf %.2f %.2f Td %s Tj ET\n", res, size, pdfMargin, pdfPageH-p.y-size, pdfString(line))
		p.y += leading
	}
}

// rule draws a light line across the page.
func (p *streamPDF) rule() {
	p.space(4)
	fmt.Fprintf(&p.page, "0.8 G 0.5 w %.2f %.2f m %.2f %.2f l S 0 G\n", pdfMargin, pdfPageH-p.y, pdfPageW-pdfMargin, pdfPageH-p.y)
	p.y += 4
}

// gap leaves vertical space (never carried to a new page).
func (p *streamPDF) gap(h float64) {
	if p.pages > 0 && p.y+h < pdfPageH-pdfBottom {
		p.y += h
	}
}

// space makes sure h points fit on the page, starting a new one if not.
func (p *streamPDF) space(h float64) {
	if p.pages == 0 || p.y+h > pdfPageH-pdfBottom {
		p.endPage()
		p.pages++
		p.y = pdfMargin
	}
}

// endPage writes the current page (with its footer) and its content stream.
func (p *streamPDF) endPage() {
	if p.pages == 0 {
		return
	}
	res := p.fontFor("I", 8)
	footer := fmt.Sprintf("Page %d", p.pages)
	fmt.Fprintf(&p.page, "BT /%s 8 Tf %.2f 28.35 Td %s Tj ET\n", res, (pdfPageW-p.metrics.GetStringWidth(footer))/2, pdfString(footer))
	p.zbuf.Reset()
	if p.zw == nil {
		p.zw = zlib.NewWriter(&p.zbuf)
	} else {
		p.zw.Reset(&p.zbuf)
	}
	_, _ = p.zw.Write(p.page.Bytes())
	_ = p.zw.Close()
	p.page.Reset()
	content := p.next()
	p.offset(content)
	p.out.printf("%d 0 obj\n<< /Length %d /Filter /FlateDecode >>\nstream\n", content, p.zbuf.Len())
	_, _ = p.out.Write(p.zbuf.Bytes())
	p.out.printf("\nendstream\nendobj\n")
	fonts := ""
	for i, f := range pdfFonts {
		fonts += fmt.Sprintf("/%s %d 0 R ", f.res, pdfObjFont+i)
	}
	p.object(p.next(), fmt.Sprintf("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %.2f %.2f] /Resources << /Font << %s>> >> /Contents %d 0 R >>",
		pdfPageW, pdfPageH, fonts, content))
	if p.out.err == nil {
		p.out.err = p.out.w.Flush()
	}
	if p.onPage != nil {
		p.onPage()
	}
}

// Close ends the last page and writes the page tree, the offset table and
// the trailer. The page tree lists every page: pages are objects
// firstPage+1, +3, … (each follows its content stream), so it is written
// from a count, not from a list kept in memory.
func (p *streamPDF) Close() error {
	defer p.xref.Close()
	p.space(0) // a document has at least one page
	p.endPage()
	firstPage := pdfObjFont + len(pdfFonts) + 1 // after the fonts and the info object
	p.offset(2)
	p.out.printf("2 0 obj\n<< /Type /Pages /Count %d /Kids [", p.pages)
	for i := range p.pages {
		p.out.printf(" %d 0 R", firstPage+1+2*i)
	}
	p.out.printf(" ] >>\nendobj\n")
	start := p.out.n
	p.out.printf("xref\n0 %d\n0000000000 65535 f \n", p.nobj+1)
	if _, err := io.Copy(p.out, io.NewSectionReader(p.xref, 0, int64(p.nobj)*20)); err != nil && p.out.err == nil {
		p.out.err = err
	}
	p.out.printf("trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n", p.nobj+1, pdfObjFont+len(pdfFonts), start)
	if p.out.err == nil {
		p.out.err = p.out.w.Flush()
	}
	return p.out.err
}

// pageTokens is a stack of page tokens on disk, for reading a thread's pages
// back from the oldest: a few bytes a page (the tokens are cursors, not PHI),
// so the export's memory does not grow with the thread. The file is unlinked
// as soon as it is made.
type pageTokens struct {
	f    *os.File
	w    *bufio.Writer
	size int64
}

func newPageTokens() (*pageTokens, error) {
	f, err := os.CreateTemp("", "clinicchat-export-pages-*")
	if err != nil {
		return nil, fmt.Errorf("export page tokens: %w", err)
	}
	_ = os.Remove(f.Name())
	return &pageTokens{f: f, w: bufio.NewWriter(f)}, nil
}

// push adds a token: [token][uint16 length].
func (t *pageTokens) push(token string) error {
	if len(token) > 0xffff {
		return fmt.Errorf("export page tokens: a token of %d bytes", len(token))
	}
	var l [2]byte
	binary.BigEndian.PutUint16(l[:], uint16(len(token)))
	if _, err := t.w.WriteString(token); err != nil {
		return fmt.Errorf("export page tokens: %w", err)
	}
	if _, err := t.w.Write(l[:]); err != nil {
		return fmt.Errorf("export page tokens: %w", err)
	}
	t.size += int64(len(token)) + 2
	return nil
}

// popAll calls fn with each token, the last pushed first.
func (t *pageTokens) popAll(fn func(string) error) error {
	if err := t.w.Flush(); err != nil {
		return fmt.Errorf("export page tokens: %w", err)
	}
	var l [2]byte
	buf := make([]byte, 0xffff)
	for pos := t.size; pos > 0; {
		if _, err := t.f.ReadAt(l[:], pos-2); err != nil {
			return fmt.Errorf("export page tokens: %w", err)
		}
		n := int64(binary.BigEndian.Uint16(l[:]))
		if n > pos-2 {
			return fmt.Errorf("export page tokens: a record is longer than the file before it")
		}
		if _, err := t.f.ReadAt(buf[:n], pos-2-n); err != nil {
			return fmt.Errorf("export page tokens: %w", err)
		}
		if err := fn(string(buf[:n])); err != nil {
			return err
		}
		pos -= 2 + n
	}
	return nil
}

func (t *pageTokens) close() { _ = t.f.Close() }
