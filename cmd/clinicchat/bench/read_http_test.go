package bench

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
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

// plainHead takes the gateway's plain answers (a length, any header order
// and case, Connection: close) and leaves every other form to net/http.
func TestPlainHead(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		head           string
		status, length int
		keep, ok       bool
	}{
		{head: "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n", status: 200, length: 27, keep: true, ok: true},
		{head: "HTTP/1.1 403 Forbidden\r\ncontent-length:0\r\nDate: x\r\n\r\n", status: 403, length: 0, keep: true, ok: true},
		{head: "HTTP/1.1 200\r\nContent-Length: 2\r\nConnection: keep-alive, Close\r\n\r\n", status: 200, length: 2, keep: false, ok: true},
		{head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{head: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{head: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"},                       // no length: to the close
		{head: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n"},         // twice
		{head: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"},                             // not a length
		{head: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n c\r\n\r\n"},              // folded
		{head: "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n"},                             // space in the name
		{head: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n"},                              // HTTP/1.0
		{head: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"}, // interim
		{head: "HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n"},
		{head: "HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\n"},
		{head: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"}, // the connection ends inside the head
	} {
		br := bufio.NewReader(strings.NewReader(tc.head + "{}"))
		status, length, keep, n, ok := plainHead(br)
		require.Equal(t, tc.ok, ok, tc.head)
		if !ok {
			// Nothing consumed: net/http's parser reads it all.
			rest, _ := io.ReadAll(br)
			require.Equal(t, tc.head+"{}", string(rest), tc.head)
			continue
		}
		require.Equal(t, []any{tc.status, tc.length, tc.keep, len(tc.head)}, []any{status, length, keep, n}, tc.head)
	}
}

// A head that arrives in pieces is read whole; the answer's body after it.
func TestRawConnReadsAHeadInPieces(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		defer server.Close()
		for _, part := range []string{"HTTP/1.1 200 OK\r\nContent-Le", "ngth: 27\r\n", "\r\n", `{"name":"conv`, `ersations/c1"}`} {
			if _, err := io.WriteString(server, part); err != nil {
				return
			}
		}
	}()
	c := &rawConn{conn: client, br: bufio.NewReaderSize(client, 8<<10)}
	status, keep, err := c.readAnswer()
	require.NoError(t, err)
	require.Equal(t, []any{200, true, `{"name":"conversations/c1"}`}, []any{status, keep, string(c.body)})
}

// The gateway's answer to a markRead is read without an allocation once
// the connection's buffers are grown (net/http's parser made a Response,
// its header map and a string per field for each).
func TestRawConnReadsAPlainAnswerWithoutAllocating(t *testing.T) {
	answer := "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nGrpc-Metadata-Content-Type: application/grpc\r\n" +
		"Date: Wed, 02 Dec 2026 00:00:00 GMT\r\nContent-Length: 40\r\n\r\n" + `{"conversation":{"name":"conversations/c"}}`[:40]
	r := strings.NewReader("")
	c := &rawConn{br: bufio.NewReaderSize(r, 8<<10)}
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(answer)
		c.br.Reset(r)
		status, keep, err := c.readAnswer()
		if err != nil || status != 200 || !keep || len(c.body) != 40 {
			t.Fatalf("%d %v %v %q", status, keep, err, c.body)
		}
	})
	require.Zero(t, allocs)
}
