package app

import (
	"encoding/base64"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/preferences/internal/domain"
)

func TestPageTokens(t *testing.T) {
	t.Parallel()
	fp := fingerprint([]string{"jose", "gar"}, false)
	for _, c := range []domain.Cursor{{Tier: 0, ID: "p1"}, {Tier: 2, ID: "a.b.c"}, {Tier: 1, ID: "x_y-z"}} {
		got, err := decodeToken(encodeToken(c, fp), fp)
		require.NoError(t, err)
		require.Equal(t, c, *got)
	}
	tok := encodeToken(domain.Cursor{Tier: 1, ID: "p1"}, fp)
	for _, bad := range []struct {
		tok string
		fp  uint64
	}{
		{tok, fingerprint([]string{"jose"}, false)},
		{tok, fingerprint([]string{"jose", "gar"}, true)},
		{"!!!", fp},
		{base64.RawURLEncoding.EncodeToString([]byte("v1.9.p1.0")), fp},
		{base64.RawURLEncoding.EncodeToString([]byte("v2.1.p1.0")), fp},
		{base64.RawURLEncoding.EncodeToString([]byte("v1.1.p/1.0")), fp},
		{base64.RawURLEncoding.EncodeToString([]byte("v1.1")), fp},
	} {
		_, err := decodeToken(bad.tok, bad.fp)
		require.ErrorIs(t, err, domain.ErrBadPageToken)
	}
}
