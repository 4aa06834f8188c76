package imagemeta_test

import (
	"bytes"
	"image"
	_ "image/jpeg"
	_ "image/png"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/attachment/internal/imagemeta"
	tf "github.com/clinicchat/clinicchat/services/attachment/internal/testfiles"
)

// strip writes in in pieces of size step.
func strip(t *testing.T, in []byte, step int) []byte {
	var out bytes.Buffer
	s := imagemeta.NewStripper(&out)
	for off := 0; off < len(in); off += step {
		_, err := s.Write(in[off:min(off+step, len(in))])
		require.NoError(t, err)
	}
	require.NoError(t, s.Close())
	require.Equal(t, int64(out.Len()), s.Written())
	return out.Bytes()
}

func pixels(t *testing.T, b []byte) image.Image {
	m, _, err := image.Decode(bytes.NewReader(b))
	require.NoError(t, err)
	return m
}

func TestStripsImageMetadataKeepingPixels(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		clean, dirty []byte
		gone, kept   []string
	}{
		"jpeg": {tf.JPEG(), tf.JPEGWithMetadata(), []string{"Exif\x00\x00", "http://ns.adobe.com/xap", "Photoshop", "trailing"}, []string{"ICC_PROFILE"}},
		"png":  {tf.PNG(), tf.PNGWithMetadata(), []string{"tEXt", "zTXt", "iTXt", "eXIf", "tIME", "trailing"}, []string{"IHDR", "IDAT", "IEND"}},
	} {
		t.Run(name, func(t *testing.T) {
			require.Contains(t, string(tc.dirty), tf.GPSMarker)
			whole := strip(t, tc.dirty, len(tc.dirty))
			for _, step := range []int{1, 2, 3, 7, 64, 1000} {
				require.Equal(t, whole, strip(t, tc.dirty, step), "step %d", step)
			}
			require.NotContains(t, string(whole), tf.GPSMarker)
			for _, s := range tc.gone {
				require.NotContains(t, string(whole), s)
			}
			for _, s := range tc.kept {
				require.Contains(t, string(whole), s)
			}
			require.Equal(t, pixels(t, tc.clean), pixels(t, whole), "pixels are not re-encoded")
			if name == "png" {
				require.Equal(t, tc.clean, whole, "exactly the image without its metadata chunks")
			}
			require.Equal(t, tc.clean, strip(t, tc.clean, 5), "a clean image passes unchanged")
		})
	}
}

func TestOtherFilesPassThrough(t *testing.T) {
	t.Parallel()
	for _, in := range [][]byte{tf.PDF(), []byte("hi"), {}, []byte("plain text with \xFF\xD8 inside")} {
		require.Equal(t, string(in), string(strip(t, in, 3)))
	}
}

func TestMalformedJPEGIsRefused(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	s := imagemeta.NewStripper(&out)
	_, err := s.Write([]byte{0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x01, 0, 0, 0})
	if err == nil {
		err = s.Close()
	}
	require.ErrorIs(t, err, imagemeta.ErrMalformed)
}
