package store

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
)

// encodeExtras stores what json.Marshal would, its shortcut included.
func TestEncodeExtrasIsJSON(t *testing.T) {
	for _, e := range []domain.Extras{
		{},
		{Attachments: []domain.AttachmentRef{}},
		{Attachments: []domain.AttachmentRef{{Name: "attachments/a", Filename: "x-ray.png", ContentType: "image/png", SizeBytes: 7}}},
		{Artifact: &domain.Artifact{Type: 1, Ref: "apt-1", Title: "Check-up"}},
	} {
		want, err := json.Marshal(e)
		require.NoError(t, err)
		got, err := encodeExtras(e)
		require.NoError(t, err)
		require.Equal(t, string(want), got)
	}
}
