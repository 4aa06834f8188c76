package gateway

import (
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"

	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
)

// maxJSONBody bounds a JSON request body (a message is at most 10,000
// characters; nothing legitimate comes near this).
const maxJSONBody = 1 << 20

// authenticate verifies the request's bearer token.
func (s *Server) authenticate(r *http.Request) (auth.Identity, *apiError) {
	values := r.Header.Values("Authorization")
	if len(values) == 0 {
		return auth.Identity{}, unauthenticated("Sign in: the request carries no bearer token")
	}
	tok, ok := auth.BearerToken(values[0])
	if len(values) > 1 || !ok || tok == "" {
		return auth.Identity{}, unauthenticated("Sign in again: send exactly one Authorization: Bearer <token> header")
	}
	id, err := s.deps.Verifier.Verify(r.Context(), tok)
	if err != nil {
		s.log.Debug("token rejected", zap.String("route", routeOf(r)), zap.Error(err))
		return auth.Identity{}, unauthenticated("Sign in again: the bearer token is not valid")
	}
	return id, nil
}

// requireAuth lets a request through only with a verified bearer token, and
// puts the caller's identity in its context. The token itself reaches the
// services as "authorization" metadata (grpc-gateway's AnnotateContext).
func (s *Server) requireAuth(next runtime.HandlerFunc) runtime.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
		id, aerr := s.authenticate(r)
		if aerr != nil {
			s.writeError(w, r, aerr)
			return
		}
		next(w, r.WithContext(auth.WithIdentity(r.Context(), id)), params)
	}
}

// requireJSON checks that a request body sent to a JSON route is JSON, and
// bounds its size. Empty bodies pass (custom methods such as :pin take none);
// the upload route takes raw bytes and checks its own body.
func (s *Server) requireJSON(next runtime.HandlerFunc) runtime.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
		switch r.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch:
		default:
			next(w, r, params)
			return
		}
		if routeOf(r) == routeUpload { // tagged by tagRoute
			next(w, r, params)
			return
		}
		if r.ContentLength != 0 || r.Header.Get("Content-Type") != "" {
			if err := checkJSONContentType(r); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
		if r.ContentLength > maxJSONBody {
			s.writeError(w, r, decodeError("http: request body too large"))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxJSONBody)
		next(w, r, params)
	}
}

// checkJSONContentType accepts a body declared as application/json, any
// +json type, text/plain (what a browser's fetch sends for a string body) or
// nothing at all; the body must then parse as JSON (else 400). Other declared
// types (forms, multipart, XML) are refused with 415.
func checkJSONContentType(r *http.Request) *apiError {
	ct := r.Header.Get("Content-Type")
	if ct == "" || ct == "application/json" {
		return nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json") || mt == "text/plain") {
		return nil
	}
	return newAPIError(codes.InvalidArgument, ReasonUnsupportedMediaType,
		"Send the request body as JSON with the header Content-Type: application/json")
}

// devTokenRequest is the body of POST /v1/dev/tokens.
type devTokenRequest struct {
	Subject        string `json:"subject"`
	Role           string `json:"role"`
	Practice       string `json:"practice"`
	Name           string `json:"name"`
	AuthAgeSeconds int64  `json:"authAgeSeconds"`
}

// devTokens issues a signed token in dev mode (SPEC.md section 3). Without a
// dev issuer the route does not exist: 404.
func (s *Server) devTokens(w http.ResponseWriter, r *http.Request) {
	if s.deps.DevIssuer == nil {
		s.writeError(w, r, notFound("There is no such API path"))
		return
	}
	if err := checkJSONContentType(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	var req devTokenRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		if errors.Is(err, io.EOF) {
			s.writeError(w, r, invalidArgument("Send a JSON body: {\"subject\",\"role\",\"practice\",\"authAgeSeconds\",\"name\"}"))
			return
		}
		s.writeError(w, r, invalidArgument("The request body is not valid JSON: "+err.Error()))
		return
	}
	var problems []string
	if req.Subject == "" {
		problems = append(problems, "subject is required")
	} else if strings.ContainsAny(req.Subject, "/ ") {
		problems = append(problems, "subject may not contain a slash or a space")
	}
	if req.Practice == "" {
		problems = append(problems, "practice is required")
	}
	if !auth.KnownRole(req.Role) {
		problems = append(problems, "role must be one of dentist, hygienist, assistant, front_desk, practice_admin, patient, system")
	}
	if req.AuthAgeSeconds < 0 {
		problems = append(problems, "authAgeSeconds must not be negative")
	}
	if len(problems) > 0 {
		s.writeError(w, r, invalidArgument("Invalid token request: "+strings.Join(problems, "; ")))
		return
	}
	tok, err := s.deps.DevIssuer.Issue(req.Subject, req.Role, req.Practice, req.Name,
		time.Duration(req.AuthAgeSeconds)*time.Second)
	if err != nil {
		s.writeError(w, r, invalidArgument("Invalid token request: "+err.Error()))
		return
	}
	s.log.Debug("dev token issued", zap.String(logkeys.Practice, req.Practice), zap.String("role", req.Role))
	body, err := json.Marshal(map[string]string{"token": tok})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, body)
}
