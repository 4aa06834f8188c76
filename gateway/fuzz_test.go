package gateway

import (
	"bytes"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"testing"
)

// FuzzCursor: any Last-Event-ID parses or fails cleanly, and what parses
// prints as the same cursor.
func FuzzCursor(f *testing.F) {
	for _, s := range []string{"d12.c7", "d0.c0", "d18446744073709551615.c1", "d.c", "d1c2", "d-1.c2", "d1.c2.x", "",
		"d12.3.c7", "d12.0.c7", "d0.1.c0", "d12.4294967296.c7"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r := httptest.NewRequest(http.MethodGet, "/v1/events", nil)
		r.Header.Set("Last-Event-ID", s)
		c, err := parseCursor(lastEventID(r))
		if err != nil {
			return
		}
		again, err := parseCursor(c.String())
		if err != nil || again != c {
			t.Fatalf("%q: %v then %v (%v)", s, c, again, err)
		}
	})
}

// FuzzMultipartUpload: any multipart body finds its file part or fails with
// an API error, reading no more than it was given, and never more parts
// than the limit.
func FuzzMultipartUpload(f *testing.F) {
	var seed bytes.Buffer
	mw := multipart.NewWriter(&seed)
	_ = mw.SetBoundary("b0undary")
	_ = mw.WriteField("conversation", "conversations/c1")
	fw, _ := mw.CreateFormFile("file", "notes.txt")
	_, _ = fw.Write([]byte("hello"))
	_ = mw.Close()
	f.Add(seed.Bytes())
	f.Add([]byte("--b0undary\r\n\r\n--b0undary--\r\n"))
	f.Add([]byte("--b0undary\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n--b0undary--"))
	s := &Server{cfg: Config{}.withDefaults()}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest(http.MethodPost, "/v1/attachments?filename=a.txt", bytes.NewReader(body))
		r.Header.Set("Content-Type", "multipart/form-data; boundary=b0undary")
		src, aerr := s.uploadSource(httptest.NewRecorder(), r)
		if aerr != nil {
			if aerr.st.Message() == "" {
				t.Fatal("an error without a message")
			}
			return
		}
		n, err := io.Copy(io.Discard, src.body)
		if err == nil && n > int64(len(body)) {
			t.Fatalf("read %d file bytes from a %d-byte body", n, len(body))
		}
	})
}
