package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// TestUnknownJSONFieldIsRefused: a misspelt field is 400 INVALID_ARGUMENT
// naming it (it was dropped silently, so "sensitve": true sent health
// details unprotected).
func TestUnknownJSONFieldIsRefused(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	st := requireError(t, h.do(http.MethodPost, "/v1/conversations", tok,
		`{"patient":"patients/pa","sensitve":true}`), http.StatusBadRequest, "INVALID_ARGUMENT")
	require.Contains(t, st.Message, `Unknown field "sensitve"`)
	st = requireError(t, h.do(http.MethodPost, "/v1/conversations/c1:markRead", tok,
		`{"upTo":"","extra":{"a":1}}`), http.StatusBadRequest, "INVALID_ARGUMENT")
	require.Contains(t, st.Message, `Unknown field "extra"`)
	// Dev tokens are strict too.
	hd := newHarness(t, func(h *harness, c *Config, d *Deps) { c.DevMode = true; d.DevIssuer = &h.tokens.Issuer })
	requireError(t, hd.do(http.MethodPost, "/v1/dev/tokens", "",
		`{"subject":"a","role":"dentist","practice":"p","rol":"x"}`), http.StatusBadRequest, "INVALID_ARGUMENT")
}

// TestWrongJSONTypeIsExplained: a value of the wrong type gets a sentence a
// person understands, not the decoder's "proto: (line 1:9): invalid value…".
func TestWrongJSONTypeIsExplained(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	st := requireError(t, h.do(http.MethodPost, "/v1/conversations", tok, `{"patient":5}`),
		http.StatusBadRequest, "INVALID_ARGUMENT")
	require.Equal(t, `Field "patient" must be a string`, st.Message)
	st = requireError(t, h.do(http.MethodPost, "/v1/conversations", tok, `{"patient":`),
		http.StatusBadRequest, "INVALID_ARGUMENT")
	require.NotContains(t, st.Message, "proto:")
}

// TestOversizedJSONBodyIs413: a JSON body over 1 MiB is 413, whether its
// length is declared or it comes chunked (it was 400).
func TestOversizedJSONBodyIs413(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	big := `{"patient":"` + strings.Repeat("a", 2<<20) + `"}`
	requireError(t, h.do(http.MethodPost, "/v1/conversations", tok, big), http.StatusRequestEntityTooLarge, ReasonRequestTooLarge)
	req, err := http.NewRequest(http.MethodPost, h.srv.URL+"/v1/conversations", io.MultiReader(strings.NewReader(big)))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.srv.Client().Do(req)
	require.NoError(t, err)
	requireError(t, resp, http.StatusRequestEntityTooLarge, ReasonRequestTooLarge)
}

// TestAPIResponsesAreNotCachedOrSniffed: every API response, success or
// error, carries Cache-Control: no-store and nosniff, and no Grpc-Metadata-*
// header leaks from the services.
func TestAPIResponsesAreNotCachedOrSniffed(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	h.conv.add("conversations/c1", "p1", "patients/pa")
	for _, tc := range []struct {
		method, path, token string
		body                any
	}{
		{http.MethodGet, "/v1/conversations/c1", tok, nil},
		{http.MethodPost, "/v1/conversations", tok, `{"patient":"patients/pa"}`},
		{http.MethodGet, "/v1/conversations/nope", tok, nil},
		{http.MethodGet, "/v1/conversations/c1", "", nil},
		{http.MethodGet, "/healthz", "", nil},
	} {
		resp := h.do(tc.method, tc.path, tc.token, tc.body)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, "no-store", resp.Header.Get("Cache-Control"), "%s %s", tc.method, tc.path)
		require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"), "%s %s", tc.method, tc.path)
		for k := range resp.Header {
			require.False(t, strings.HasPrefix(k, "Grpc-"), "%s %s leaks header %s", tc.method, tc.path, k)
		}
	}
}

// TestResourceExhaustedIs429WithRetryAfter: a service's RESOURCE_EXHAUSTED
// with RetryInfo is HTTP 429 with Retry-After, counted in /metrics.
func TestResourceExhaustedIs429WithRetryAfter(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	h.conv.mu.Lock()
	h.conv.createErr = errs.ResourceExhausted("sends", 6500*time.Millisecond, "Slow down")
	h.conv.mu.Unlock()
	resp := h.do(http.MethodPost, "/v1/conversations", tok, `{"patient":"patients/pa"}`)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "%s", raw)
	require.Equal(t, "7", resp.Header.Get("Retry-After"))
	var st apiStatus
	require.NoError(t, json.Unmarshal(raw, &st))
	require.Equal(t, errs.ReasonResourceExhausted, st.Details[0].Reason)
	m := h.do(http.MethodGet, "/metrics", "", nil)
	body, _ := io.ReadAll(m.Body)
	m.Body.Close()
	require.Contains(t, string(body), `clinicchat_gateway_limited_total{limit="sends"} 1`)
}

// multipartBody builds a multipart body of parts (name, header bytes) and a
// file part.
func multipartBody(t *testing.T, parts int, headerBytes int) (string, *bytes.Buffer) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for i := range parts {
		hdr := textproto.MIMEHeader{"Content-Disposition": {fmt.Sprintf(`form-data; name="x%d"`, i)}}
		if headerBytes > 0 {
			hdr.Set("X-Pad", strings.Repeat("a", headerBytes))
		}
		_, err := mw.CreatePart(hdr)
		require.NoError(t, err)
	}
	fw, err := mw.CreateFormFile("file", "notes.txt")
	require.NoError(t, err)
	_, _ = fw.Write([]byte("hello"))
	require.NoError(t, mw.Close())
	return mw.FormDataContentType(), &buf
}

// TestManyEmptyMultipartPartsAreRefused: 200,000 empty parts before the
// file were accepted; now more than a few are refused.
func TestManyEmptyMultipartPartsAreRefused(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	ct, body := multipartBody(t, maxMultipartParts+1, 0)
	st := requireError(t, h.upload(tok, "conversation=conversations/c1", ct, body), http.StatusBadRequest, "INVALID_ARGUMENT")
	require.Contains(t, st.Message, "parts")
	// A few fields before the file are fine.
	ct, body = multipartBody(t, 2, 0)
	resp := h.upload(tok, "conversation=conversations/c1", ct, body)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

// TestHugeMultipartPartHeaderIsRefused: a part header of megabytes was
// buffered whole; now the framing before the file has a small budget (413).
func TestHugeMultipartPartHeaderIsRefused(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	ct, body := multipartBody(t, 1, 8<<20)
	requireError(t, h.upload(tok, "conversation=conversations/c1", ct, body), http.StatusRequestEntityTooLarge, ReasonRequestTooLarge)
}
