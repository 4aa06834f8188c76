package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
)

// Reasons the gateway itself produces, besides the errs package's.
const (
	// ReasonUnavailable: an upstream or NATS cannot be reached right now.
	ReasonUnavailable = "UNAVAILABLE"
	// ReasonInternal: something failed inside; the message carries an error id.
	ReasonInternal = "INTERNAL"
	// ReasonUnsupportedMediaType: a JSON body sent with another Content-Type.
	ReasonUnsupportedMediaType = "UNSUPPORTED_MEDIA_TYPE"
	// ReasonMethodNotAllowed: the path exists, but not with this method.
	ReasonMethodNotAllowed = "METHOD_NOT_ALLOWED"
	// ReasonRequestTooLarge: a request body over its limit (HTTP 413).
	ReasonRequestTooLarge = "REQUEST_TOO_LARGE"
)

// maskedPrefix starts the message of an INTERNAL status that a clinicchat
// service already masked (grpcx), so it is passed on as it is.
const maskedPrefix = "Something went wrong on our side"

// apiError is a status with ErrorInfo{reason, domain "clinicchat"}, and an
// optional HTTP status that overrides the one derived from it.
type apiError struct {
	st   *status.Status
	http int
}

func (e *apiError) Error() string              { return e.st.Message() }
func (e *apiError) GRPCStatus() *status.Status { return e.st }

// newAPIError builds an apiError; msg is for the person at the screen and
// never carries PHI.
func newAPIError(c codes.Code, reason, msg string) *apiError {
	return &apiError{st: withInfo(status.New(c, msg), reason)}
}

func (e *apiError) withHTTP(code int) *apiError { e.http = code; return e }

func invalidArgument(msg string) *apiError {
	return newAPIError(codes.InvalidArgument, errs.ReasonInvalidArgument, msg)
}

func unauthenticated(msg string) *apiError {
	return newAPIError(codes.Unauthenticated, errs.ReasonUnauthenticated, msg)
}

func notFound(msg string) *apiError { return newAPIError(codes.NotFound, errs.ReasonNotFound, msg) }

func unavailable(msg string) *apiError {
	return newAPIError(codes.Unavailable, ReasonUnavailable, msg)
}

// withInfo adds ErrorInfo{reason, clinicchat} to st.
func withInfo(st *status.Status, reason string) *status.Status {
	out, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: errs.Domain})
	if err != nil {
		return st
	}
	return out
}

// codeReason is the reason used for a status that arrives without one: the
// canonical code name ("INVALID_ARGUMENT", "NOT_FOUND"...).
func codeReason(c codes.Code) string { return code.Code(c).String() }

// httpStatus maps a status to its HTTP code: SPEC.md's reasons first, then
// grpc-gateway's standard code mapping.
func httpStatus(st *status.Status) int {
	switch errs.Reason(st.Err()) {
	case errs.ReasonAttachmentTooLarge:
		return http.StatusRequestEntityTooLarge
	case errs.ReasonUnsupportedType, ReasonUnsupportedMediaType:
		return http.StatusUnsupportedMediaType
	case ReasonMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case ReasonRequestTooLarge:
		return http.StatusRequestEntityTooLarge
	}
	return runtime.HTTPStatusFromCode(st.Code())
}

// handleError is the mux's error handler, and the one every handler of the
// gateway uses: the body is a google.rpc.Status whose details carry an
// ErrorInfo with the reason and domain "clinicchat".
func (s *Server) handleError(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	s.writeError(w, r, err)
}

// handleRoutingError answers unknown paths and methods. Every /v1 path needs
// a bearer token, so without a valid one the answer is 401 rather than 404.
func (s *Server) handleRoutingError(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpCode int) {
	if _, aerr := s.authenticate(r); aerr != nil {
		s.writeError(w, r, aerr)
		return
	}
	switch httpCode {
	case http.StatusMethodNotAllowed:
		s.writeError(w, r, newAPIError(codes.Unimplemented, ReasonMethodNotAllowed,
			"This path does not accept the "+r.Method+" method"))
	case http.StatusBadRequest:
		s.writeError(w, r, invalidArgument("The request path is malformed"))
	default:
		s.writeError(w, r, notFound("There is no such API path"))
	}
}

// notFound answers paths outside the API.
func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	s.writeError(w, r, notFound("There is no such API path"))
}

// writeError writes err as a google.rpc.Status JSON body. Errors without
// ErrorInfo get the code name as their reason; internal and transport errors
// not already masked by a service are logged with an error id and masked.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	httpCode := 0
	var ae *apiError
	var hse *runtime.HTTPStatusError
	switch {
	case errors.As(err, &ae):
		httpCode = ae.http
	case errors.As(err, &hse):
		// grpc-gateway's own errors (a malformed path escape): keep its HTTP code.
		httpCode = hse.HTTPStatus
		if _, ok := status.FromError(hse.Err); !ok && hse.HTTPStatus == http.StatusBadRequest {
			err = invalidArgument("The request path is malformed")
		} else {
			err = hse.Err
		}
	}
	st := s.normalize(routeOf(r), status.Convert(err))
	if httpCode == 0 {
		httpCode = httpStatus(st)
	}
	body, merr := s.marshaler.Marshal(st.Proto())
	if merr != nil {
		s.log.Error("marshal error status", zap.Error(merr))
		body = []byte(`{"code":13,"message":"Something went wrong on our side","details":[]}`)
		httpCode = http.StatusInternalServerError
	}
	if st.Code() == codes.Unauthenticated {
		w.Header().Set("WWW-Authenticate", `Bearer realm="clinicchat"`)
	}
	switch httpCode {
	case http.StatusTooManyRequests:
		if w.Header().Get("Retry-After") == "" { // a handler may know better (event streams)
			wait := max(errs.RetryAfter(st.Err()), time.Second)
			w.Header().Set("Retry-After", strconv.FormatInt(int64((wait+time.Second-1)/time.Second), 10))
		}
		s.metrics.limited.WithLabelValues(limitOf(st)).Inc()
	case http.StatusRequestEntityTooLarge:
		s.metrics.limited.WithLabelValues(strings.ToLower(errs.Reason(st.Err()))).Inc()
	}
	writeJSON(w, httpCode, body)
}

// limitOf is the ErrorInfo "limit" of a RESOURCE_EXHAUSTED status (a
// bounded set of names chosen by the services), for the metrics label.
func limitOf(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetMetadata()[errs.MetaLimit] != "" {
			return info.GetMetadata()[errs.MetaLimit]
		}
	}
	return "other"
}

// normalize makes every status presentable: a reason in ErrorInfo, and no
// internal detail (addresses, Go errors) in the message.
func (s *Server) normalize(route string, st *status.Status) *status.Status {
	hasReason := errs.Reason(st.Err()) != ""
	if st.Code() == codes.InvalidArgument && !hasReason {
		// grpc-gateway reports a body it cannot decode as INVALID_ARGUMENT
		// with the decoder's own words.
		if de := decodeError(st.Message()); de != nil {
			return de.st
		}
	}
	switch st.Code() {
	case codes.Unknown, codes.Internal, codes.DataLoss:
		if hasReason || strings.HasPrefix(st.Message(), maskedPrefix) {
			break
		}
		id := ids.New()
		s.log.Error("internal error", zap.String(logkeys.ErrorID, id), zap.String("route", route),
			zap.Stringer(logkeys.Code, st.Code()), zap.String("error", st.Message()))
		return withInfo(status.New(codes.Internal, maskedPrefix+" (error id "+id+")"), ReasonInternal)
	case codes.Unavailable:
		if hasReason {
			break
		}
		id := ids.New()
		s.log.Warn("upstream unavailable", zap.String(logkeys.ErrorID, id), zap.String("route", route),
			zap.String("error", st.Message()))
		return withInfo(status.New(codes.Unavailable,
			"The service is temporarily unavailable; try again shortly (error id "+id+")"), ReasonUnavailable)
	case codes.DeadlineExceeded:
		if !hasReason {
			return withInfo(status.New(codes.DeadlineExceeded, "The request took too long; try again"),
				codeReason(codes.DeadlineExceeded))
		}
	case codes.Canceled:
		if !hasReason {
			return withInfo(status.New(codes.Canceled, "The request was canceled"), codeReason(codes.Canceled))
		}
	}
	if hasReason {
		return st
	}
	return withInfo(st, codeReason(st.Code()))
}

// handleStreamError renders an error in the middle of a server-streaming
// response (GET /v1/auditEvents:export) like every other error.
func (s *Server) handleStreamError(ctx context.Context, err error) *status.Status {
	route := routeUnmatched
	if p, ok := runtime.HTTPPattern(ctx); ok {
		route = p.String()
	}
	return s.normalize(route, status.Convert(err))
}

// incomingHeader decides which request headers become gRPC metadata. Only
// Authorization matters to the services, and grpc-gateway forwards it by
// itself (as "authorization"); clients may not inject other metadata
// (Grpc-Metadata-*), so nothing else is forwarded but a request id.
func incomingHeader(key string) (string, bool) {
	if textproto.CanonicalMIMEHeaderKey(key) == "X-Request-Id" {
		return "x-request-id", true
	}
	return "", false
}

// writeJSON writes a JSON body with its status.
func writeJSON(w http.ResponseWriter, code int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// protojson's errors (its "proto:" prefix uses a space or a no-break space).
var (
	reDecodePrefix  = regexp.MustCompile(`^proto:[\s\x{00a0}]`)
	reUnknownField  = regexp.MustCompile(`unknown field "([^"]{1,100})"`)
	reInvalidValue  = regexp.MustCompile(`invalid value for (\w+) field (\w{1,100})`)
	reDuplicateName = regexp.MustCompile(`duplicate field "([^"]{1,100})"`)
)

// kindWords says what a field of a protobuf kind must be, for a person.
var kindWords = map[string]string{
	"string": "a string", "bool": "true or false", "enum": "one of its listed values (a string)",
	"message": "an object", "bytes": "base64-encoded data", "double": "a number", "float": "a number",
	"int32": "a whole number", "int64": "a whole number", "uint32": "a whole number", "uint64": "a whole number",
	"sint32": "a whole number", "sint64": "a whole number", "fixed32": "a whole number",
	"fixed64": "a whole number", "sfixed32": "a whole number", "sfixed64": "a whole number",
}

// decodeError turns the message of a request body that could not be decoded
// into an error a person understands: an unknown field is named, a value
// of the wrong type says what it must be, a body over its limit is 413.
// Other messages are not decoding errors: nil.
func decodeError(msg string) *apiError {
	switch {
	case strings.Contains(msg, "http: request body too large"):
		return newAPIError(codes.InvalidArgument, ReasonRequestTooLarge,
			fmt.Sprintf("The request body is larger than %s; send less", humanBytes(maxJSONBody)))
	case reDecodePrefix.MatchString(msg):
		if m := reUnknownField.FindStringSubmatch(msg); m != nil {
			return invalidArgument(fmt.Sprintf("Unknown field %q: check its spelling", m[1]))
		}
		if m := reInvalidValue.FindStringSubmatch(msg); m != nil {
			what, ok := kindWords[m[1]]
			if !ok {
				what = "of another type"
			}
			return invalidArgument(fmt.Sprintf("Field %q must be %s", m[2], what))
		}
		if m := reDuplicateName.FindStringSubmatch(msg); m != nil {
			return invalidArgument(fmt.Sprintf("Field %q appears more than once", m[1]))
		}
		return invalidArgument("The request body is not valid JSON for this request")
	case strings.HasPrefix(msg, "invalid character"), strings.HasPrefix(msg, "unexpected EOF"),
		strings.HasPrefix(msg, "json: "):
		return invalidArgument("The request body is not valid JSON")
	}
	return nil
}
