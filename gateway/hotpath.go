package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
)

// The two API calls of every chat message, served by hand (serveHot): a
// send and a markRead. Their patterns are grpc-gateway's Pattern.String of
// the generated routes (the route label of metrics, logs and spans).
const (
	routeCreateMessage = "/v1/{parent=conversations/*}/messages"
	routeMarkRead      = "/v1/{name=conversations/*}:markRead"
)

// onNew, when set (tests), is given every Server New makes: how a test
// reaches the gateway of an all-in-one to turn serveHot off.
var onNew func(*Server)

// serveHot serves a POST of a clean /v1 path (apiFirst) when it is a send or
// a markRead that it answers exactly as grpc-gateway's generated handler
// does, and reports whether it did. It does what the mux, the middlewares
// (tagRoute, requireAuth, requireJSON), the generated handler and
// runtime.ForwardResponseMessage do for such a request, in their order and
// with their code where it can (the same decoder, errors written by
// writeError), but without their per-request copies: no request copied by
// WithContext (route pattern, identity), no metadata built from every
// header (AnnotateContext), no cancel context, no call options for header
// and trailer metadata nobody forwards (every outgoing header matcher of the
// mux refuses).
//
// The upstream call carries the metadata AnnotateContext would give it:
// "authorization" (the one Authorization header), "x-request-id" (each
// X-Request-Id header of printable ASCII: incomingHeader), and
// "x-forwarded-host" and "x-forwarded-for" as grpc-gateway derives them.
//
// Anything else goes to the mux (false, before anything is read or
// written): a Grpc-Timeout header (a deadline, or INVALID_ARGUMENT), a TE
// header (trailers may be forwarded), a Content-Type other than exactly
// application/json or none, more than one Authorization header or one
// that is not printable ASCII. TestHotPathIsTheGeneratedPath holds the two
// paths to the same answers.
func (s *Server) serveHot(w http.ResponseWriter, r *http.Request) bool {
	if s.noHotPath.Load() {
		return false
	}
	route, ok := hotRoute(r)
	if !ok {
		return false
	}
	markRead := route == routeMarkRead
	p := r.URL.Path
	authz := r.Header["Authorization"]
	setRoute(r.Context(), route) // tagRoute
	// requireAuth
	if _, aerr := s.authenticate(r); aerr != nil {
		s.writeError(w, r, aerr)
		return true
	}
	// requireJSON: the content type is JSON or absent.
	if r.ContentLength > maxJSONBody {
		s.writeError(w, r, decodeError("http: request body too large"))
		return true
	}
	body := http.MaxBytesReader(w, r.Body, maxJSONBody)
	r.Body = body

	md := s.hotMetadata(r, authz[0])
	ctx := metadata.NewOutgoingContext(r.Context(), md)
	var resp proto.Message
	var err error
	if markRead {
		var req conversationv1.MarkConversationReadRequest
		if err = decodeHotBody(s, body, &req); err == nil {
			req.Name = p[len("/v1/") : len(p)-len(":markRead")] // "conversations/{id}"
			_, _ = io.Copy(io.Discard, body)
			var c *conversationv1.Conversation
			c, err = s.conversations.MarkConversationRead(ctx, &req)
			resp = c
		}
	} else {
		var req deliveryv1.CreateMessageRequest
		if err = decodeHotBody(s, body, &req); err == nil {
			req.Parent = p[len("/v1/") : len(p)-len("/messages")] // "conversations/{id}"
			// The thread's sends to one delivery replica (grpcx.DialAffine).
			md[grpcx.AffinityHeader] = []string{req.Parent}
			_, _ = io.Copy(io.Discard, body)
			var m *deliveryv1.Message
			m, err = s.delivery.CreateMessage(ctx, &req)
			resp = m
		}
	}
	if err != nil {
		s.writeError(w, r, err)
		return true
	}
	// runtime.ForwardResponseMessage
	w.Header().Set("Content-Type", "application/json")
	out, err := apiMarshaler{s.marshaler}.Marshal(resp)
	if err != nil {
		s.writeError(w, r, err)
		return true
	}
	if _, err := w.Write(out); err != nil && !errors.Is(err, http.ErrBodyNotAllowed) {
		s.log.Debug("write response", zap.String("route", route), zap.Error(err))
	}
	return true
}

// affinity is the metadata that sends a send to its thread's delivery
// replica (grpcx.DialAffine) when grpc-gateway serves it, as serveHot does.
func affinity(_ context.Context, r *http.Request) metadata.MD {
	id, ok := strings.CutPrefix(r.URL.Path, "/v1/conversations/")
	if id, ok = strings.CutSuffix(id, "/messages"); !ok || r.Method != http.MethodPost || id == "" || strings.IndexByte(id, '/') >= 0 {
		return nil
	}
	return metadata.MD{grpcx.AffinityHeader: {"conversations/" + id}}
}

// hotRoute says whether serveHot serves r, a POST of a clean /v1 path, and
// its route.
func hotRoute(r *http.Request) (route string, ok bool) {
	const prefix = "/v1/conversations/"
	p := r.URL.Path
	if !strings.HasPrefix(p, prefix) {
		return "", false
	}
	rest := p[len(prefix):]
	id, markRead := strings.CutSuffix(rest, ":markRead")
	route = routeMarkRead
	if !markRead {
		if id, ok = strings.CutSuffix(rest, "/messages"); !ok {
			return "", false
		}
		route = routeCreateMessage
	}
	if id == "" || strings.IndexByte(id, '/') >= 0 {
		return "", false
	}
	h := r.Header
	if len(h["Grpc-Timeout"]) > 0 || len(h["Te"]) > 0 {
		return "", false
	}
	switch ct := h["Content-Type"]; {
	case len(ct) == 0:
	case len(ct) == 1 && ct[0] == "application/json":
	default:
		return "", false
	}
	authz := h["Authorization"]
	if len(authz) > 1 || len(authz) == 1 && !printableASCII(authz[0]) {
		return "", false
	}
	return route, true
}

// decodeHotBody is the generated handler's decode of a request body: the
// mux's marshaler (apiMarshaler), an empty body leaving req empty, any other
// failure INVALID_ARGUMENT with the decoder's words (normalized by
// writeError, as the mux's error handler does).
//
// The body is read into a buffer of hotBodies (apiDecoder makes one per
// request), given back once decoded (decodeRead keeps nothing of it).
func decodeHotBody(s *Server, body io.Reader, req any) error {
	bp := hotBodies.Get().(*[]byte)
	b, rest := readUpTo(body, fastBodyLimit, (*bp)[:0])
	err := decodeRead(b, rest, req, s.marshaler)
	if cap(b) <= maxPooledBody {
		*bp = b[:0]
		hotBodies.Put(bp)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return status.Errorf(codes.InvalidArgument, "%v", err)
	}
	return nil
}

// hotBodies are decodeHotBody's read buffers; one that grew past
// maxPooledBody (a long text) is left to the collector.
var hotBodies = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

const maxPooledBody = 16 << 10

// hotMetadata is the outgoing metadata runtime.AnnotateContext makes of r
// for this gateway (incomingHeader forwards X-Request-Id only; no metadata
// annotators): authz is r's one Authorization header, printable ASCII.
func (s *Server) hotMetadata(r *http.Request, authz string) metadata.MD {
	md := make(metadata.MD, 4)
	// One array for the values of the keys that have one.
	vals := make([]string, 0, 3)
	vals = append(vals, authz)
	md["authorization"] = vals[0:1:1]
	var rid []string
	for _, v := range r.Header["X-Request-Id"] {
		if printableASCII(v) {
			rid = append(rid, v)
		}
	}
	if rid != nil {
		md["x-request-id"] = rid
	}
	if host := r.Header.Get("X-Forwarded-Host"); host != "" && printableASCII(host) {
		vals = append(vals, host)
		md["x-forwarded-host"] = vals[1:2:2]
	} else if r.Host != "" && printableASCII(r.Host) {
		vals = append(vals, r.Host)
		md["x-forwarded-host"] = vals[1:2:2]
	}
	var xff []string
	for _, v := range r.Header["X-Forwarded-For"] {
		if printableASCII(v) {
			xff = append(xff, v)
		}
	}
	if addr := r.RemoteAddr; addr != "" {
		if ip, _, err := net.SplitHostPort(addr); err == nil && printableASCII(ip) {
			xff = append(xff, ip)
		}
	}
	switch len(xff) {
	case 0:
	case 1:
		n := len(vals)
		vals = append(vals, xff[0])
		md["x-forwarded-for"] = vals[n : n+1 : n+1]
	default:
		md["x-forwarded-for"] = []string{strings.Join(xff, ", ")}
	}
	return md
}

// printableASCII is grpc-gateway's test of a metadata text value (0x20 to
// 0x7E).
func printableASCII(v string) bool {
	for i := range len(v) {
		if c := v[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}
