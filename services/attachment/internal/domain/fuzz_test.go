package domain_test

import (
	"bytes"
	"testing"

	"github.com/clinicchat/clinicchat/services/attachment/internal/domain"
	tf "github.com/clinicchat/clinicchat/services/attachment/internal/testfiles"
)

// FuzzSniff feeds arbitrary bytes, names and declared types to the sniffer
// (ZIP and OLE2 directories included): it never panics or loops, and what
// it accepts agrees with the name and the declared type.
func FuzzSniff(f *testing.F) {
	for _, seed := range []struct {
		data           []byte
		name, declared string
	}{
		{tf.PNG(), "x.png", "image/png"}, {tf.PDF(), "a.pdf", ""}, {tf.DOC(), "a.doc", "application/msword"},
		{tf.XLS(), "a.xls", ""}, {tf.DOCX(), "a.docx", ""}, {tf.ODT(), "a.odt", ""}, {tf.Text(), "a.txt", "text/plain"},
		{tf.CraftedDOC(300), "a.doc", ""}, {tf.HEIC(), "a.heic", ""}, {[]byte("<html>"), "a.txt", "text/plain"},
		{tf.MSI(), "a.doc", ""}, {tf.DOCM(), "a.docx", ""},
	} {
		f.Add(seed.data, seed.name, seed.declared, 7)
	}
	f.Fuzz(func(t *testing.T, data []byte, name, declared string, chunk int) {
		if chunk <= 0 || chunk > len(data) {
			chunk = max(1, len(data))
		}
		s := domain.NewSniffer()
		for rest := data; len(rest) > 0; rest = rest[min(chunk, len(rest)):] {
			_, _ = s.Write(rest[:min(chunk, len(rest))])
		}
		_ = s.Check(name, declared)
		ft, err := s.Finish(bytes.NewReader(data), name, declared)
		if err == nil && !ft.Agrees(name, declared) {
			t.Fatalf("accepted %q for %q declared %q", ft.ContentType, name, declared)
		}
	})
}
