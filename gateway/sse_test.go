package gateway

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// A stream keeps a small block buffer between writes, whatever the size of
// the events it wrote: one 10 KB message does not pin 16 KB for the
// stream's life.
func TestSSEWriterDoesNotKeepLargeBuffers(t *testing.T) {
	rec := httptest.NewRecorder()
	sw := newSSEWriter(rec)
	sw.start()
	big := `{"text":"` + strings.Repeat("x", 10000) + `"}`
	sw.event(EventMessageCreated, cursor{d: 1, c: 2}, []byte(big))
	require.NoError(t, sw.flush())
	require.LessOrEqual(t, sw.buf.Cap(), sseKeepBuf)
	sw.event(EventMessageCreated, cursor{d: 2, c: 2}, []byte(`{"text":"hi"}`))
	require.NoError(t, sw.flush())
	require.NotZero(t, sw.buf.Cap(), "a small block's buffer is kept for the next one")
	require.LessOrEqual(t, sw.buf.Cap(), sseKeepBuf)
	body := rec.Body.String()
	require.Contains(t, body, big+"\n\n", "the large event written whole")
	require.True(t, strings.HasSuffix(body, "data: {\"text\":\"hi\"}\n\n"), body[len(body)-40:])
}
