package gateway

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
)

// patternReader yields n bytes of a repeating pattern, with no length the
// HTTP client can see (so the body goes out chunked), and never holds more
// than the caller's buffer.
type patternReader struct{ left int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	n := int64(len(b))
	if n > p.left {
		n = p.left
	}
	for i := range b[:n] {
		b[i] = byte(i % 251)
	}
	p.left -= n
	return int(n), nil
}

func (h *harness) upload(token, query, contentType string, body io.Reader) *http.Response {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodPost, h.srv.URL+"/v1/attachments?"+query, body)
	require.NoError(h.t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := h.srv.Client().Do(req)
	require.NoError(h.t, err)
	return resp
}

func (h *harness) nextUpload() uploadRecord {
	h.t.Helper()
	select {
	case rec := <-h.att.uploads:
		return rec
	case <-time.After(waitFor):
		h.t.Fatal("the attachment service saw no upload")
		return uploadRecord{}
	}
}

func uploadQuery(conv, filename string) string {
	return url.Values{"conversation": {conv}, "filename": {filename}}.Encode()
}

func TestUploadRaw(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	data := bytes.Repeat([]byte("%PDF-1.7 hello "), 10_000) // 150 kB: several frames
	resp := h.upload(tok, uploadQuery("conversations/c1", "Röntgen befund.pdf"), "application/pdf", bytes.NewReader(data))
	body := decodeJSON(t, resp)
	sum := sha256.Sum256(data)
	require.Equal(t, "attachments/up1", body["name"])
	require.Equal(t, "conversations/c1", body["conversation"])
	require.Equal(t, "Röntgen befund.pdf", body["filename"])
	require.Equal(t, "application/pdf", body["contentType"])
	require.Equal(t, float64(len(data)), body["sizeBytes"]) // a JSON number
	require.Equal(t, hex.EncodeToString(sum[:]), body["sha256"])

	rec := h.nextUpload()
	require.True(t, rec.completed)
	require.Equal(t, int64(len(data)), rec.received)
	require.Equal(t, "users/doc", rec.caller, "the service verified the forwarded token")
	require.Equal(t, "application/pdf", rec.header.GetDeclaredContentType())
}

func TestUploadTooLargeIsStoppedWhileStreaming(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	const limit = DefaultMaxUploadBytes
	// 25 MiB + 1 byte, chunked: the gateway cannot know the size up front.
	resp := h.upload(tok, uploadQuery("conversations/c1", "big.png"), "image/png", &patternReader{left: limit + 1})
	st := requireError(t, resp, http.StatusRequestEntityTooLarge, "ATTACHMENT_TOO_LARGE")
	require.Contains(t, st.Message, "25 MiB")

	rec := h.nextUpload()
	require.False(t, rec.completed, "a cut-off upload must not complete")
	require.Error(t, rec.err, "the upload is canceled, not closed")
	require.LessOrEqual(t, rec.received, limit)

	// Exactly the limit is fine.
	resp = h.upload(tok, uploadQuery("conversations/c1", "exact.png"), "image/png", &patternReader{left: limit})
	body := decodeJSON(t, resp)
	require.Equal(t, float64(limit), body["sizeBytes"])
	require.Equal(t, limit, h.nextUpload().received)

	metrics := h.do(http.MethodGet, "/metrics", "", nil)
	raw, err := io.ReadAll(metrics.Body)
	require.NoError(t, err)
	_ = metrics.Body.Close()
	require.Contains(t, string(raw), "clinicchat_gateway_upload_bytes_total ")
}

func TestUploadDeclaredTooLargeIsRefusedBeforeReading(t *testing.T) {
	h := newHarness(t, func(_ *harness, c *Config, _ *Deps) { c.MaxUploadBytes = 1000 })
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	resp := h.upload(tok, uploadQuery("conversations/c1", "a.png"), "image/png", bytes.NewReader(make([]byte, 5000)))
	requireError(t, resp, http.StatusRequestEntityTooLarge, "ATTACHMENT_TOO_LARGE")
	select {
	case rec := <-h.att.uploads:
		t.Fatalf("the service should not have been called: %+v", rec)
	default:
	}
}

func TestUploadMultipart(t *testing.T) {
	h := newHarness(t)
	tok := h.token("pa", auth.RolePatient, "p1", 0)
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	require.NoError(t, mw.WriteField("note", "ignored"))
	part, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Disposition": {`form-data; name="file"; filename="tooth.jpg"`},
		"Content-Type":        {"image/jpeg"},
	})
	require.NoError(t, err)
	data := bytes.Repeat([]byte{0xFF, 0xD8, 0xFF, 0xE0}, 50_000)
	_, err = part.Write(data)
	require.NoError(t, err)
	require.NoError(t, mw.Close())

	resp := h.upload(tok, url.Values{"conversation": {"conversations/c1"}}.Encode(), mw.FormDataContentType(), &buf)
	body := decodeJSON(t, resp)
	require.Equal(t, "tooth.jpg", body["filename"], "the part's file name is used when the query has none")
	require.Equal(t, "image/jpeg", body["contentType"])

	rec := h.nextUpload()
	require.True(t, rec.completed)
	require.Equal(t, int64(len(data)), rec.received)
	require.Equal(t, "patients/pa", rec.caller)

	t.Run("no file part", func(t *testing.T) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		require.NoError(t, mw.WriteField("other", "x"))
		require.NoError(t, mw.Close())
		resp := h.upload(tok, uploadQuery("conversations/c1", "x.jpg"), mw.FormDataContentType(), &buf)
		requireError(t, resp, http.StatusBadRequest, "INVALID_ARGUMENT")
	})
}

func TestUploadValidation(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	for name, q := range map[string]string{
		"no conversation":  url.Values{"filename": {"a.png"}}.Encode(),
		"bad conversation": uploadQuery("patients/p", "a.png"),
		"no filename":      url.Values{"conversation": {"conversations/c1"}}.Encode(),
	} {
		t.Run(name, func(t *testing.T) {
			resp := h.upload(tok, q, "image/png", bytes.NewReader([]byte("x")))
			requireError(t, resp, http.StatusBadRequest, "INVALID_ARGUMENT")
		})
	}
	t.Run("no token", func(t *testing.T) {
		resp := h.upload("", uploadQuery("conversations/c1", "a.png"), "image/png", bytes.NewReader([]byte("x")))
		requireError(t, resp, http.StatusUnauthorized, "UNAUTHENTICATED")
	})
}

func TestAttachmentServiceUnimplemented(t *testing.T) {
	h := newHarness(t)
	h.att.mu.Lock()
	h.att.unimplemented = true
	h.att.mu.Unlock()
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	resp := h.upload(tok, uploadQuery("conversations/c1", "a.png"), "image/png", bytes.NewReader([]byte("png")))
	requireError(t, resp, http.StatusNotImplemented, "UNIMPLEMENTED")
	requireError(t, h.do(http.MethodGet, "/v1/attachments/a1:download", tok, nil), http.StatusNotImplemented, "UNIMPLEMENTED")
	// GetAttachment goes through the generated mapping.
	requireError(t, h.do(http.MethodGet, "/v1/attachments/a1", tok, nil), http.StatusNotImplemented, "UNIMPLEMENTED")
}

func TestDownload(t *testing.T) {
	h := newHarness(t)
	tok := h.token("pa", auth.RolePatient, "p1", 0)
	data := bytes.Repeat([]byte("0123456789"), 30_000)
	h.att.mu.Lock()
	h.att.files["attachments/a1"] = storedFile{data: data, att: &attachmentv1.Attachment{
		Name: "attachments/a1", Conversation: "conversations/c1", Filename: `Zahn "röntgen";1.png`,
		ContentType: "image/png", SizeBytes: int32(len(data)), CreateTime: timestamppb.Now(),
	}}
	h.att.mu.Unlock()

	resp := h.do(http.MethodGet, "/v1/attachments/a1:download", tok, nil)
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, data, got)
	require.Equal(t, "image/png", resp.Header.Get("Content-Type"))
	require.Equal(t, strconv.Itoa(len(data)), resp.Header.Get("Content-Length"))
	require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
	require.Equal(t, `attachment; filename="Zahn _r_ntgen__1.png"; filename*=UTF-8''Zahn%20%22r%C3%B6ntgen%22%3B1.png`,
		resp.Header.Get("Content-Disposition"))

	t.Run("not found", func(t *testing.T) {
		requireError(t, h.do(http.MethodGet, "/v1/attachments/nope:download", tok, nil), http.StatusNotFound, "NOT_FOUND")
	})
	t.Run("metadata only (GetAttachment) is not mistaken for a download", func(t *testing.T) {
		requireError(t, h.do(http.MethodGet, "/v1/attachments/a1", tok, nil), http.StatusNotImplemented, "UNIMPLEMENTED")
	})
	t.Run("a failure mid-stream truncates the response", func(t *testing.T) {
		h.att.mu.Lock()
		h.att.failAfter = 5000
		h.att.mu.Unlock()
		resp := h.do(http.MethodGet, "/v1/attachments/a1:download", tok, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		_, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	})
}

func TestContentDisposition(t *testing.T) {
	for name, want := range map[string]string{
		"plain.pdf":        `attachment; filename="plain.pdf"; filename*=UTF-8''plain.pdf`,
		"":                 `attachment; filename="attachment"; filename*=UTF-8''attachment`,
		"a\r\nX-Evil: 1":   `attachment; filename="a__X-Evil: 1"; filename*=UTF-8''a%0D%0AX-Evil%3A%201`,
		"../../etc/passwd": `attachment; filename=".._.._etc_passwd"; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd`,
		"日本.png":           `attachment; filename="__.png"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.png`,
	} {
		require.Equal(t, want, contentDisposition(name), name)
	}
}
