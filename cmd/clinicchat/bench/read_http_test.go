package bench

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The raw markRead client sends what net/http would and reads
// every answer's framing: a length, chunks, a refusal's reason, a closed
// connection.
func TestRawMarkerRoundTrips(t *testing.T) {
	t.Parallel()
	var calls []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		calls = append(calls, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization")+" "+r.Header.Get("Content-Type")+" "+string(body))
		switch {
		case strings.HasSuffix(string(body), `/3"}`):
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			_, _ = io.WriteString(w, `{"code":7,"details":[{"reason":"NOT_PARTICIPANT"}]}`)
		case strings.HasSuffix(string(body), `/2"}`): // chunked: flushed before its end
			_, _ = io.WriteString(w, `{"name":`)
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, `"conversations/c1"}`)
		case strings.HasSuffix(string(body), `/4"}`):
			w.Header().Set("Connection", "close")
			_, _ = io.WriteString(w, `{}`)
		default:
			_, _ = io.WriteString(w, `{"name":"conversations/c1"}`)
		}
	}))
	defer srv.Close()
	th := &thread{conv: "conversations/c1", patient: newClient(nil, srv.URL, "tok")}
	rm := newRawMarker([]*thread{th})
	require.NotNil(t, rm)
	defer rm.close()
	ctx := context.Background()

	require.NoError(t, rm.markRead(ctx, th, "conversations/c1/messages/1"))
	require.NoError(t, rm.markRead(ctx, th, "conversations/c1/messages/2"))
	err := rm.markRead(ctx, th, "conversations/c1/messages/3")
	var ae *apiError
	require.True(t, errors.As(err, &ae), "%v", err)
	require.Equal(t, http.StatusForbidden, ae.status)
	require.Equal(t, "NOT_PARTICIPANT", ae.reason)
	require.NoError(t, rm.markRead(ctx, th, "conversations/c1/messages/4"))
	require.NoError(t, rm.markRead(ctx, th, "conversations/c1/messages/5"), "a new connection after the server closed one")
	require.Equal(t, []string{
		`POST /v1/conversations/c1:markRead Bearer tok application/json {"upTo":"conversations/c1/messages/1"}`,
		`POST /v1/conversations/c1:markRead Bearer tok application/json {"upTo":"conversations/c1/messages/2"}`,
		`POST /v1/conversations/c1:markRead Bearer tok application/json {"upTo":"conversations/c1/messages/3"}`,
		`POST /v1/conversations/c1:markRead Bearer tok application/json {"upTo":"conversations/c1/messages/4"}`,
		`POST /v1/conversations/c1:markRead Bearer tok application/json {"upTo":"conversations/c1/messages/5"}`,
	}, calls)

	require.Nil(t, newRawMarker([]*thread{{patient: newClient(nil, "https://example.test", "")}}), "TLS: net/http's client")
}
