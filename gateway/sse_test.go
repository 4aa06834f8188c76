package gateway

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// A stream holds no block buffer between writes, whatever the size of the
// events it wrote, and gives a buffer back to the pool it came from only
// while it is small enough (one 10 KB message does not pin its buffer for
// the stream's life, nor in the pool).
func TestSSEWriterLendsItsBuffer(t *testing.T) {
	rec := httptest.NewRecorder()
	var bufs sseBufs
	sw := newSSEWriter(rec, &bufs)
	sw.start()
	sw.event(EventMessageCreated, cursor{d: 1, c: 1}, []byte(`{"text":"hi"}`))
	require.NotNil(t, sw.buf)
	require.NoError(t, sw.flush())
	require.Nil(t, sw.buf, "no buffer held between writes")
	big := `{"text":"` + strings.Repeat("x", sseKeepBuf) + `"}`
	sw.event(EventMessageCreated, cursor{d: 2, c: 1}, []byte(big))
	require.Greater(t, cap(sw.buf), sseKeepBuf)
	require.NoError(t, sw.flush())
	require.Nil(t, sw.buf)
	for range 4 { // whatever the pool holds now is small
		b := bufs.get()
		require.LessOrEqual(t, cap(*b), sseKeepBuf)
		require.Zero(t, len(*b))
	}
	sw.event(EventMessageCreated, cursor{d: 3, c: 1}, []byte(`{"text":"hi"}`))
	require.NoError(t, sw.flush())
	require.Equal(t, "event: message.created\nid: d1.c1\ndata: {\"text\":\"hi\"}\n\n"+
		"event: message.created\nid: d2.c1\ndata: "+big+"\n\n"+
		"event: message.created\nid: d3.c1\ndata: {\"text\":\"hi\"}\n\n", rec.Body.String())
}
