package gateway

import (
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
)

// webFiles is the web client: web/index.html at "/", web/app/* at "/app/*".
// Plain HTML, CSS and JavaScript modules: no build step.
//
//go:embed web/index.html web/app
var webFiles embed.FS

// webCSP allows the page's own scripts, styles and API only. Attachment
// images are shown from blob: URLs made from authorized downloads.
const webCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; " +
	"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; " +
	"frame-ancestors 'none'"

// webAsset is one embedded file, ready to serve.
type webAsset struct {
	body        []byte
	contentType string
	etag        string
}

// webHandler serves the web client's files from memory with security
// headers. The files carry no per-user data; they are revalidated on every
// load (ETag) since their names carry no version.
type webHandler struct {
	assets   map[string]webAsset // URL path → asset
	notFound http.Handler
}

func newWebHandler(notFound http.Handler) (*webHandler, error) {
	h := &webHandler{assets: map[string]webAsset{}, notFound: notFound}
	err := fs.WalkDir(webFiles, "web", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := webFiles.ReadFile(p)
		if err != nil {
			return err
		}
		ct := mime.TypeByExtension(path.Ext(p))
		switch path.Ext(p) {
		case ".js":
			ct = "text/javascript; charset=utf-8"
		case ".css":
			ct = "text/css; charset=utf-8"
		case ".html":
			ct = "text/html; charset=utf-8"
		case ".svg":
			ct = "image/svg+xml"
		}
		if ct == "" {
			ct = "application/octet-stream"
		}
		sum := sha256.Sum256(body)
		url := strings.TrimPrefix(p, "web")
		if url == "/index.html" {
			url = "/"
		}
		h.assets[url] = webAsset{body: body, contentType: ct,
			etag: `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("web client: %w", err)
	}
	if _, ok := h.assets["/"]; !ok {
		return nil, fmt.Errorf("web client: index.html is missing")
	}
	return h, nil
}

func (h *webHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a, ok := h.assets[r.URL.Path]
	if !ok {
		h.notFound.ServeHTTP(w, r)
		return
	}
	hd := w.Header()
	hd.Set("Content-Security-Policy", webCSP)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("ETag", a.etag)
	hd.Set("Content-Type", a.contentType)
	if match := r.Header.Get("If-None-Match"); match != "" && strings.Contains(match, a.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	hd.Set("Content-Length", fmt.Sprint(len(a.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(a.body)
	}
}

// ClientConfig is the body of GET /v1/clientConfig: what the web client
// needs to know of the deployment before anyone signs in. It carries no
// user data and needs no token (an addition to SPEC.md's paths).
type ClientConfig struct {
	// DevTokens is true when POST /v1/dev/tokens is served (dev mode).
	DevTokens bool `json:"devTokens"`
	// ArchiveAfterSeconds is how long a conversation may go without a
	// message before it is archived.
	ArchiveAfterSeconds int64 `json:"archiveAfterSeconds"`
}

// clientConfig answers GET /v1/clientConfig.
func (s *Server) clientConfig(w http.ResponseWriter, r *http.Request) {
	body, err := json.Marshal(ClientConfig{
		DevTokens:           s.deps.DevIssuer != nil,
		ArchiveAfterSeconds: int64(s.cfg.ArchiveAfter.Seconds()),
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, body)
}
