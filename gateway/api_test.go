package gateway

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

func TestAuthMiddleware(t *testing.T) {
	h := newHarness(t)
	good := h.token("doc", auth.RoleDentist, "p1", 0)
	other, _ := testkit.NewTokens()

	t.Run("no token", func(t *testing.T) {
		st := requireError(t, h.do(http.MethodGet, "/v1/conversations/c1", "", nil), http.StatusUnauthorized, "UNAUTHENTICATED")
		require.Equal(t, int(codes.Unauthenticated), st.Code)
	})
	t.Run("malformed header", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, h.srv.URL+"/v1/conversations/c1", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Basic abc")
		resp, err := h.srv.Client().Do(req)
		require.NoError(t, err)
		requireError(t, resp, http.StatusUnauthorized, "UNAUTHENTICATED")
	})
	t.Run("token of another issuer", func(t *testing.T) {
		bad := other.Token(t, "doc", auth.RoleDentist, "p1", 0)
		requireError(t, h.do(http.MethodGet, "/v1/conversations/c1", bad, nil), http.StatusUnauthorized, "UNAUTHENTICATED")
	})
	t.Run("garbage token", func(t *testing.T) {
		requireError(t, h.do(http.MethodGet, "/v1/events", "not-a-jwt", nil), http.StatusUnauthorized, "UNAUTHENTICATED")
	})
	t.Run("unknown path without token is 401 too", func(t *testing.T) {
		requireError(t, h.do(http.MethodGet, "/v1/nothing/here", "", nil), http.StatusUnauthorized, "UNAUTHENTICATED")
	})
	t.Run("valid token reaches the service as authorization metadata", func(t *testing.T) {
		h.conv.add("conversations/c1", "p1", "patients/pa")
		body := decodeJSON(t, h.do(http.MethodGet, "/v1/conversations/c1", good, nil))
		require.Equal(t, "conversations/c1", body["name"])
		require.Equal(t, "Bearer "+good, h.conv.lastAuth())
	})
	t.Run("clients cannot inject metadata", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, h.srv.URL+"/v1/conversations/c1", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+good)
		req.Header.Set("Grpc-Metadata-Authorization", "Bearer forged")
		resp, err := h.srv.Client().Do(req)
		require.NoError(t, err)
		decodeJSON(t, resp)
		require.Equal(t, "Bearer "+good, h.conv.lastAuth())
	})
}

func TestDevTokens(t *testing.T) {
	h := newHarness(t, func(h *harness, c *Config, d *Deps) {
		c.DevMode = true
		d.DevIssuer = &h.tokens.Issuer
	})
	verifier := h.gw.deps.Verifier

	t.Run("the client config says so, without a token", func(t *testing.T) {
		require.Equal(t, true, decodeJSON(t, h.do(http.MethodGet, "/v1/clientConfig", "", nil))["devTokens"])
	})
	t.Run("issues a verifiable token", func(t *testing.T) {
		body := decodeJSON(t, h.do(http.MethodPost, "/v1/dev/tokens", "", map[string]any{
			"subject": "pa", "role": "patient", "practice": "demo", "authAgeSeconds": 600, "name": "Pat",
		}))
		tok, _ := body["token"].(string)
		require.NotEmpty(t, tok)
		id, err := verifier.Verify(context.Background(), tok)
		require.NoError(t, err)
		require.Equal(t, "pa", id.Subject)
		require.Equal(t, auth.RolePatient, id.Role)
		require.Equal(t, "demo", id.Practice)
		require.Equal(t, "Pat", id.Name, "the optional name becomes the name claim")
		require.WithinDuration(t, time.Now().Add(-10*time.Minute), id.AuthTime, time.Minute)
		require.WithinDuration(t, time.Now().Add(12*time.Hour), id.Expiry, time.Minute)
		// And the gateway accepts it.
		h.conv.add("conversations/c9", "demo", "patients/pa")
		decodeJSON(t, h.do(http.MethodGet, "/v1/conversations/c9", tok, nil))
	})
	for name, body := range map[string]any{
		"unknown role":     map[string]any{"subject": "u", "role": "janitor", "practice": "demo"},
		"no subject":       map[string]any{"role": "dentist", "practice": "demo"},
		"no practice":      map[string]any{"subject": "u", "role": "dentist"},
		"slash in subject": map[string]any{"subject": "a/b", "role": "dentist", "practice": "demo"},
		"malformed JSON":   `{"subject":`,
		"empty body":       "",
	} {
		t.Run(name, func(t *testing.T) {
			requireError(t, h.do(http.MethodPost, "/v1/dev/tokens", "", body), http.StatusBadRequest, "INVALID_ARGUMENT")
		})
	}
	t.Run("not JSON", func(t *testing.T) {
		resp, err := h.srv.Client().Post(h.srv.URL+"/v1/dev/tokens", "application/x-www-form-urlencoded", strings.NewReader("subject=u"))
		require.NoError(t, err)
		requireError(t, resp, http.StatusUnsupportedMediaType, ReasonUnsupportedMediaType)
		resp, err = h.srv.Client().Post(h.srv.URL+"/v1/dev/tokens", "text/plain", strings.NewReader("subject=u"))
		require.NoError(t, err)
		requireError(t, resp, http.StatusBadRequest, "INVALID_ARGUMENT")
	})
}

func TestDevTokensAbsentInProduction(t *testing.T) {
	h := newHarness(t)
	resp := h.do(http.MethodGet, "/v1/clientConfig", "", nil)
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
	require.Equal(t, map[string]any{"devTokens": false, "archiveAfterSeconds": float64(365 * 24 * 3600)}, decodeJSON(t, resp))
	requireError(t, h.do(http.MethodPost, "/v1/dev/tokens", "",
		map[string]any{"subject": "u", "role": "dentist", "practice": "demo"}), http.StatusNotFound, "NOT_FOUND")
}

func TestNewRejectsMisconfiguration(t *testing.T) {
	tokens, verifier := testkit.NewTokens()
	_, err := New(Config{}, Deps{Verifier: verifier, DevIssuer: &tokens.Issuer})
	require.Error(t, err)
	msg := err.Error()
	// Every problem at once.
	for _, want := range []string{"Deps.JS", "Deps.Conversation", "Deps.Audit", "DevMode is off"} {
		require.Contains(t, msg, want)
	}
	_, err = New(Config{DevMode: true, KeepAlive: -1}, Deps{})
	require.ErrorContains(t, err, "DevMode needs Deps.DevIssuer")
	require.ErrorContains(t, err, "--sse-keepalive")
}

func TestErrorMapping(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	cases := []struct {
		name     string
		err      error
		httpCode int
		reason   string
	}{
		{"invalid argument", errs.InvalidArgument("Patient is required"), 400, "INVALID_ARGUMENT"},
		{"no portal account", errs.FailedPrecondition(errs.ReasonNoPortalAccount, "No portal account; offer SMS instead"), 400, "NO_PORTAL_ACCOUNT"},
		{"opted out", errs.FailedPrecondition(errs.ReasonChatOptedOut, "Patient has opted out of chat; offer SMS instead"), 400, "CHAT_OPTED_OUT"},
		{"not found", errs.NotFound("Patient not found"), 404, "NOT_FOUND"},
		{"permission denied", errs.PermissionDenied("Only staff start conversations"), 403, "PERMISSION_DENIED"},
		{"unauthenticated upstream", errs.Unauthenticated("Sign in again"), 401, "UNAUTHENTICATED"},
		{"resource exhausted", &errs.Error{Code: codes.ResourceExhausted, Reason: "RATE_LIMITED", Msg: "Slow down"}, 429, "RATE_LIMITED"},
		{"too large", errs.InvalidArgument("The file is too large").WithReason(errs.ReasonAttachmentTooLarge), 413, "ATTACHMENT_TOO_LARGE"},
		{"unsupported type", errs.InvalidArgument("Images, PDFs and documents only").WithReason(errs.ReasonUnsupportedType), 415, "UNSUPPORTED_FILE_TYPE"},
		{"unimplemented", status.Error(codes.Unimplemented, "Search is not available"), 501, "UNIMPLEMENTED"},
		{"status without reason", status.Error(codes.FailedPrecondition, "Thread is archived"), 400, "FAILED_PRECONDITION"},
		{"internal, masked by the service", errors.New("database password rejected"), 500, "INTERNAL"},
		{"unavailable", status.Error(codes.Unavailable, "dial tcp 10.1.2.3:9090: connection refused"), 503, "UNAVAILABLE"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h.conv.mu.Lock()
			h.conv.createErr = tc.err
			h.conv.mu.Unlock()
			st := requireError(t, h.do(http.MethodPost, "/v1/conversations", tok, map[string]string{"patient": "patients/pa"}),
				tc.httpCode, tc.reason)
			require.NotContains(t, st.Message, "password")
			require.NotContains(t, st.Message, "10.1.2.3")
		})
	}
	h.conv.mu.Lock()
	h.conv.createErr = nil
	h.conv.mu.Unlock()

	t.Run("malformed JSON", func(t *testing.T) {
		requireError(t, h.do(http.MethodPost, "/v1/conversations", tok, `{"patient":`), 400, "INVALID_ARGUMENT")
	})
	t.Run("wrong field type", func(t *testing.T) {
		requireError(t, h.do(http.MethodPost, "/v1/conversations", tok, `{"patient":5}`), 400, "INVALID_ARGUMENT")
	})
	t.Run("wrong content type", func(t *testing.T) {
		for _, ct := range []string{"application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"} {
			req, err := http.NewRequest(http.MethodPost, h.srv.URL+"/v1/conversations", strings.NewReader(`{"patient":"patients/pa"}`))
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+tok)
			if ct != "" {
				req.Header.Set("Content-Type", ct)
			}
			resp, err := h.srv.Client().Do(req)
			require.NoError(t, err)
			st := requireError(t, resp, http.StatusUnsupportedMediaType, ReasonUnsupportedMediaType)
			require.Contains(t, st.Message, "application/json")
		}
	})
	t.Run("empty body needs no content type", func(t *testing.T) {
		// :pin takes no body; the fake leaves it unimplemented.
		requireError(t, h.do(http.MethodPost, "/v1/conversations/c1:pin", tok, nil), 501, "UNIMPLEMENTED")
	})
	t.Run("unimplemented service", func(t *testing.T) {
		requireError(t, h.do(http.MethodGet, "/v1/auditEvents", tok, nil), 501, "UNIMPLEMENTED")
	})
	t.Run("unknown API path", func(t *testing.T) {
		requireError(t, h.do(http.MethodGet, "/v1/nothing/here", tok, nil), 404, "NOT_FOUND")
	})
	t.Run("path outside the API", func(t *testing.T) {
		requireError(t, h.do(http.MethodGet, "/nothing", "", nil), 404, "NOT_FOUND")
	})
	t.Run("method not allowed", func(t *testing.T) {
		requireError(t, h.do(http.MethodDelete, "/v1/conversations/c1", tok, nil), 405, ReasonMethodNotAllowed)
	})
}

func TestJSONIsLowerCamelCaseWithDefaults(t *testing.T) {
	h := newHarness(t)
	tok := h.token("doc", auth.RoleDentist, "p1", 0)
	// (Unknown request fields are refused: TestUnknownJSONFieldIsRefused.)
	body := decodeJSON(t, h.do(http.MethodPost, "/v1/conversations", tok,
		`{"patient":"patients/pa"}`))
	require.Equal(t, "conversations/c1", body["name"])
	require.Equal(t, "patients/pa", body["patient"])
	require.Equal(t, "ACTIVE", body["state"])
	for _, key := range []string{"patientDisplayName", "lastMessagePreview", "unreadCount", "pinned", "muted", "lastMessageSeq"} {
		require.Contains(t, body, key)
	}
	require.NotContains(t, body, "unread_count")
}

func TestHealthReadyMetrics(t *testing.T) {
	ready := make(chan error, 1)
	h := newHarness(t, func(_ *harness, _ *Config, d *Deps) {
		d.Ready = func(context.Context) error {
			select {
			case err := <-ready:
				return err
			default:
				return nil
			}
		}
	})
	tok := h.token("doc", auth.RoleDentist, "p1", 0)

	resp := h.do(http.MethodGet, "/healthz", "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	_ = resp.Body.Close()

	ready <- errors.New("conversation: connection refused")
	requireError(t, h.do(http.MethodGet, "/readyz", "", nil), http.StatusServiceUnavailable, ReasonUnavailable)
	resp = h.do(http.MethodGet, "/readyz", "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	_ = resp.Body.Close()

	h.conv.add("conversations/c42", "p1", "patients/pa")
	decodeJSON(t, h.do(http.MethodGet, "/v1/conversations/c42", tok, nil))
	decodeJSON(t, h.do(http.MethodGet, "/v1/conversations/c42", tok, nil)) // the series kept from the first
	requireError(t, h.do(http.MethodGet, "/v1/conversations/c43", tok, nil), 404, "NOT_FOUND")
	requireError(t, h.do(http.MethodGet, "/v1/nothing/c44", tok, nil), 404, "NOT_FOUND")

	resp = h.do(http.MethodGet, "/metrics", "", nil)
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	_ = resp.Body.Close()
	text := string(raw)
	require.Contains(t, text, `clinicchat_gateway_http_requests_total{code="200",method="GET",route="/v1/{name=conversations/*}"} 2`)
	require.Contains(t, text, `clinicchat_gateway_http_requests_total{code="404",method="GET",route="/v1/{name=conversations/*}"} 1`)
	require.Contains(t, text, `clinicchat_gateway_http_requests_total{code="404",method="GET",route="unmatched"} 1`)
	require.Contains(t, text, `clinicchat_gateway_http_requests_total{code="503",method="GET",route="/readyz"} 1`)
	require.Contains(t, text, `clinicchat_gateway_http_request_duration_seconds_count{code="200",method="GET",route="/v1/{name=conversations/*}"} 2`)
	require.Contains(t, text, "clinicchat_gateway_sse_clients 0")
	require.Contains(t, text, "clinicchat_gateway_upload_bytes_total 0")
	for _, id := range []string{"c42", "c43", "c44"} {
		require.NotContains(t, text, id, "raw paths must not become labels")
	}

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, h.gw.Shutdown(ctx))
	requireError(t, h.do(http.MethodGet, "/readyz", "", nil), http.StatusServiceUnavailable, ReasonUnavailable)
}
