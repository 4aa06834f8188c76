package domain_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/attachment/internal/domain"
)

func TestSanitizeFilename(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
		err      error
	}{
		{in: "x-ray.png", want: "x-ray.png"},
		{in: "  Röntgen Übersicht.pdf  ", want: "Röntgen Übersicht.pdf"},
		{in: `C:\Users\front desk\scan.pdf`, want: "scan.pdf"},
		{in: "../../etc/passwd", want: "passwd"},
		{in: "a/b/", err: domain.ErrBadFilename},
		{in: "bad\x00name\n.pdf", want: "badname.pdf"},
		{in: "invoice\u202Efdp.exe", want: "invoicefdp.exe"},
		{in: "report.pdf...", want: "report.pdf"},
		{in: "..", err: domain.ErrBadFilename},
		{in: "\x01\x02", err: domain.ErrBadFilename},
		{in: "", err: domain.ErrNoFilename},
		{in: "   ", err: domain.ErrNoFilename},
		{in: "bad\xffutf8.pdf", err: domain.ErrBadFilename},
	}
	for _, tc := range tests {
		got, err := domain.SanitizeFilename(tc.in)
		if tc.err != nil {
			require.ErrorIs(t, err, tc.err, "%q", tc.in)
			continue
		}
		require.NoError(t, err, "%q", tc.in)
		require.Equal(t, tc.want, got, "%q", tc.in)
	}
}

func TestSanitizeFilenameShortensLongNames(t *testing.T) {
	t.Parallel()
	in := strings.Repeat("ü", 200) + ".pdf" // 404 bytes
	got, err := domain.SanitizeFilename(in)
	require.NoError(t, err)
	require.LessOrEqual(t, len(got), domain.MaxFilenameBytes)
	require.True(t, utf8.ValidString(got))
	require.True(t, strings.HasSuffix(got, ".pdf"))

	noExt := strings.Repeat("x", 300)
	got, err = domain.SanitizeFilename(noExt)
	require.NoError(t, err)
	require.Len(t, got, domain.MaxFilenameBytes)
}
