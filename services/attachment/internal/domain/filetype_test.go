package domain_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/attachment/internal/domain"
	tf "github.com/clinicchat/clinicchat/services/attachment/internal/testfiles"
)

// sniff streams data through a Sniffer in chunks of n bytes, as an upload
// does, and returns Finish's answer (or Check's refusal, made as soon as the
// first SniffBytes arrived).
func sniff(data []byte, n int, filename, declared string) (domain.FileType, error) {
	s := domain.NewSniffer()
	checked := false
	for rest := data; len(rest) > 0; {
		k := min(n, len(rest))
		_, _ = s.Write(rest[:k])
		rest = rest[k:]
		if !checked && s.Ready() {
			checked = true
			if err := s.Check(filename, declared); err != nil {
				return domain.FileType{}, err
			}
		}
	}
	return s.Finish(bytes.NewReader(data), filename, declared)
}

func TestSniffAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		data     []byte
		filename string
		declared string
		want     string
	}{
		{"png", tf.PNG(), "x-ray.png", "image/png", "image/png"},
		{"png declared octet-stream", tf.PNG(), "x-ray.png", "application/octet-stream", "image/png"},
		{"png declared nothing", tf.PNG(), "x-ray.PNG", "", "image/png"},
		{"jpeg", tf.JPEG(), "photo.jpg", "image/jpeg", "image/jpeg"},
		{"jpeg alias", tf.JPEG(), "photo.jpeg", "image/jpg", "image/jpeg"},
		{"gif", tf.GIF(), "anim.gif", "image/gif", "image/gif"},
		{"webp", tf.WebP(), "pic.webp", "image/webp", "image/webp"},
		{"heic", tf.HEIC(), "IMG_0001.HEIC", "image/heic", "image/heic"},
		{"heic declared heif", tf.HEIC(), "IMG_0001.heic", "image/heif", "image/heic"},
		{"pdf", tf.PDF(), "referral.pdf", "application/pdf", "application/pdf"},
		{"pdf with params", tf.PDF(), "referral.pdf", "application/pdf; name=x", "application/pdf"},
		{"pdf without extension", tf.PDF(), "referral", "application/pdf", "application/pdf"},
		{"rtf", tf.RTF(), "letter.rtf", "text/rtf", "application/rtf"},
		{"docx", tf.DOCX(), "plan.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"},
		{"docx declared zip", tf.DOCX(), "plan.docx", "application/zip", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"},
		{"xlsx", tf.XLSX(), "costs.xlsx", "", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"},
		{"pptx", tf.PPTX(), "slides.pptx", "", "application/vnd.openxmlformats-officedocument.presentationml.presentation"},
		{"odt", tf.ODT(), "letter.odt", "application/vnd.oasis.opendocument.text", "application/vnd.oasis.opendocument.text"},
		{"doc", tf.DOC(), "old.doc", "application/msword", "application/msword"},
		{"xls", tf.XLS(), "old.xls", "application/vnd.ms-excel", "application/vnd.ms-excel"},
		{"txt", tf.Text(), "notes.txt", "text/plain", "text/plain; charset=utf-8"},
		{"csv", []byte("a,b\n1,2\n"), "list.csv", "text/csv", "text/csv; charset=utf-8"},
		{"csv from windows", []byte("a,b\n1,2\n"), "list.csv", "application/vnd.ms-excel", "text/csv; charset=utf-8"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, chunk := range []int{1, 7, 64 << 10} {
				got, err := sniff(tc.data, chunk, tc.filename, tc.declared)
				require.NoError(t, err, "chunk %d", chunk)
				require.Equal(t, tc.want, got.ContentType, "chunk %d", chunk)
			}
		})
	}
}

func TestSniffRefuses(t *testing.T) {
	t.Parallel()
	long := bytes.Repeat([]byte("é"), 4000) // multi-byte characters cut by every chunk size
	tests := []struct {
		name     string
		data     []byte
		filename string
		declared string
		want     error
	}{
		{"pdf named png", tf.PDF(), "scan.png", "", domain.ErrUnsupported},
		{"pdf declared png", tf.PDF(), "scan.pdf", "image/png", domain.ErrUnsupported},
		{"png named pdf", tf.PNG(), "scan.pdf", "application/pdf", domain.ErrUnsupported},
		{"executable", tf.Executable(), "setup.exe", "application/x-msdownload", domain.ErrUnsupported},
		{"executable named pdf", tf.Executable(), "invoice.pdf", "application/pdf", domain.ErrUnsupported},
		{"plain zip", tf.PlainZip(), "files.zip", "application/zip", domain.ErrUnsupported},
		{"plain zip named docx", tf.PlainZip(), "files.docx", "", domain.ErrUnsupported},
		{"macro-enabled docx", tf.DOCM(), "plan.docx", "", domain.ErrUnsupported},
		{"docx named xlsx", tf.DOCX(), "plan.xlsx", "", domain.ErrUnsupported},
		{"msi named doc", tf.MSI(), "setup.doc", "", domain.ErrUnsupported},
		{"mp4", tf.MP4(), "video.mp4", "video/mp4", domain.ErrUnsupported},
		{"mp4 named heic", tf.MP4(), "video.heic", "", domain.ErrUnsupported},
		{"text without extension", tf.Text(), "notes", "", domain.ErrUnsupported},
		{"html named txt declared html", []byte("<html></html>"), "page.txt", "text/html", domain.ErrUnsupported},
		{"script", []byte("#!/bin/sh\nrm -rf /\n"), "run.sh", "", domain.ErrUnsupported},
		{"text with NUL", []byte("abc\x00def"), "notes.txt", "", domain.ErrUnsupported},
		{"invalid UTF-8", []byte("abc\xff\xfe"), "notes.txt", "", domain.ErrUnsupported},
		{"cut-off character", append(append([]byte{}, long...), 0xC3), "notes.txt", "", domain.ErrUnsupported},
		{"empty", nil, "notes.txt", "", domain.ErrEmptyFile},
		{"garbage declared type", tf.PDF(), "scan.pdf", "not a type", domain.ErrUnsupported},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, chunk := range []int{1, 5, 64 << 10} {
				_, err := sniff(tc.data, chunk, tc.filename, tc.declared)
				require.ErrorIs(t, err, tc.want, "chunk %d", chunk)
			}
		})
	}
}

func TestSniffLongText(t *testing.T) {
	t.Parallel()
	data := []byte(strings.Repeat("Zahnärztin 🦷 ", 10000))
	for _, chunk := range []int{1, 3, 1000, 64 << 10} {
		got, err := sniff(data, chunk, "notes.txt", "")
		require.NoError(t, err, "chunk %d", chunk)
		require.Equal(t, domain.TypeText, got)
	}
}

func TestWithExtension(t *testing.T) {
	t.Parallel()
	require.Equal(t, "scan.pdf", domain.WithExtension("scan", domain.TypePDF))
	require.Equal(t, "scan.PDF", domain.WithExtension("scan.PDF", domain.TypePDF))
	long := strings.Repeat("a", 300)
	got := domain.WithExtension(long, domain.TypeJPEG)
	require.Len(t, got, domain.MaxFilenameBytes)
	require.True(t, strings.HasSuffix(got, ".jpg"))
}

func TestSniffRefusesHugeZipDirectories(t *testing.T) {
	t.Parallel()
	entries := make([][2]string, 10001)
	entries[0] = [2]string{"[Content_Types].xml", "<Types/>"}
	entries[1] = [2]string{"word/document.xml", "<w:document/>"}
	for i := 2; i < len(entries); i++ {
		entries[i] = [2]string{"word/media/x" + strings.Repeat("y", i%7) + string(rune('a'+i%26)) + ".xml", ""}
	}
	_, err := sniff(tf.Zip(entries...), 64<<10, "big.docx", "")
	require.ErrorIs(t, err, domain.ErrUnsupported)
	_, err = sniff(tf.Zip(entries[:100]...), 64<<10, "ok.docx", "")
	require.NoError(t, err)
}

// TestHTMLDeclaredPlainTextIsRefused: bytes that are HTML, SVG or a script
// are UNSUPPORTED_FILE_TYPE whatever the declared type and name (an HTML
// document declared text/plain was stored before).
func TestHTMLDeclaredPlainTextIsRefused(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("Post-op care: rinse gently.\n", 40)
	tests := []struct {
		name, data, filename, declared string
	}{
		{"html as text", "<!DOCTYPE html><html><body><script>alert(1)</script></body></html>", "notes.txt", "text/plain"},
		{"html without doctype", "<html><body>hi</body></html>", "notes.txt", "text/plain"},
		{"html tag after BOM and spaces", "\xEF\xBB\xBF  \n<HTML>hi", "notes.txt", "text/plain"},
		{"svg", `<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>`, "pic.txt", "text/plain"},
		{"xml svg", `<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>`, "pic.txt", ""},
		{"script late in the file", long + "<ScRiPt>alert(1)</script>", "notes.txt", "text/plain"},
		{"svg late in a csv", long + "a,<svg onload=x>", "list.csv", "text/csv"},
		{"shell script", "#!/bin/sh\nrm -rf /\n", "run.txt", "text/plain"},
		{"html as csv", "<table><tr><td>1</td></tr></table>", "list.csv", "text/csv"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, chunk := range []int{1, 7, 64 << 10} {
				_, err := sniff([]byte(tc.data), chunk, tc.filename, tc.declared)
				require.ErrorIs(t, err, domain.ErrUnsupported, "chunk %d", chunk)
			}
		})
	}
	// Text that merely mentions angle brackets is still text.
	got, err := sniff([]byte("Dose < 5 mg; see <b>notes</b> a<b\n"), 7, "notes.txt", "text/plain")
	require.NoError(t, err)
	require.Equal(t, domain.TypeText.ContentType, got.ContentType)
}
