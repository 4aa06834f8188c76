package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
)

// The two routes a busy practice calls per message, the send and markRead,
// are served by handlers of the gateway's own that do what grpc-gateway's
// generated ones do (RegisterXServiceHandlerClient: the same marshalers,
// body decode, path parameter, call options, error handler and answer),
// but build the call's metadata with annotate instead of
// runtime.AnnotateContext, whose general form (a pair list, then
// metadata.Pairs, then metadata.Join copying it, the RPC name and path
// pattern in two more context values) was ~20 of the send's ~140
// allocations at the edge (BENCHMARKS.md, gateway12). They are registered
// after the generated routes, so grpc-gateway's mux tries them first (it
// prepends); TestFastRoutesAreGrpcGateways compares both on the same
// requests: the service's metadata, the answer, and the errors.

const (
	routeSend     = "/v1/{parent=conversations/*}/messages"
	routeMarkRead = "/v1/{name=conversations/*}:markRead"
)

// fastRoutes registers the send and markRead handlers.
func (s *Server) fastRoutes() error {
	if err := s.mux.HandlePath(http.MethodPost, routeSend, unaryRoute(s,
		"/clinicchat.delivery.v1.DeliveryService/CreateMessage", routeSend, "parent",
		func(r *deliveryv1.CreateMessageRequest, v string) { r.Parent = v }, s.delivery.CreateMessage)); err != nil {
		return err
	}
	return s.mux.HandlePath(http.MethodPost, routeMarkRead, unaryRoute(s,
		"/clinicchat.conversation.v1.ConversationService/MarkConversationRead", routeMarkRead, "name",
		func(r *conversationv1.MarkConversationReadRequest, v string) { r.Name = v }, s.conversations.MarkConversationRead))
}

// unaryRoute is a generated grpc-gateway handler for a unary method whose
// body is the whole request ("body: *") and whose one path parameter is
// param (set by set), calling call, with annotate's metadata.
func unaryRoute[Req any, PReq interface {
	*Req
	proto.Message
}, Resp proto.Message](s *Server, rpc, pattern, param string, set func(PReq, string),
	call func(context.Context, PReq, ...grpc.CallOption) (Resp, error)) runtime.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request, pathParams map[string]string) {
		ctx, cancel := context.WithCancel(req.Context())
		defer cancel()
		inbound, outbound := runtime.MarshalerForRequest(s.mux, req)
		annotated, err := s.annotate(ctx, req, rpc, pattern)
		if err != nil {
			runtime.HTTPError(ctx, s.mux, outbound, w, req, err)
			return
		}
		var md runtime.ServerMetadata
		resp, err := func() (proto.Message, error) {
			protoReq := PReq(new(Req))
			if err := inbound.NewDecoder(req.Body).Decode(protoReq); err != nil && !errors.Is(err, io.EOF) {
				return nil, status.Errorf(codes.InvalidArgument, "%v", err)
			}
			val, ok := pathParams[param]
			if !ok {
				return nil, status.Errorf(codes.InvalidArgument, "missing parameter %s", param)
			}
			v, err := runtime.String(val)
			if err != nil {
				return nil, status.Errorf(codes.InvalidArgument, "type mismatch, parameter: %s, error: %v", param, err)
			}
			set(protoReq, v)
			if req.Body != nil {
				_, _ = io.Copy(io.Discard, req.Body)
			}
			return call(annotated, protoReq, grpc.Header(&md.HeaderMD), grpc.Trailer(&md.TrailerMD))
		}()
		annotated = runtime.NewServerMetadataContext(annotated, md)
		if err != nil {
			runtime.HTTPError(annotated, s.mux, outbound, w, req, err)
			return
		}
		runtime.ForwardResponseMessage(annotated, s.mux, outbound, w, req, resp, s.mux.GetForwardResponseOptions()...)
	}
}

// The request headers grpc-gateway reads to build metadata.
const (
	hdrAuthorization  = "Authorization"
	hdrXForwardedFor  = "X-Forwarded-For"
	hdrXForwardedHost = "X-Forwarded-Host"
	hdrGrpcTimeout    = "Grpc-Timeout"
)

// annotate is runtime.AnnotateContext(ctx, s.mux, r, rpc,
// runtime.WithHTTPPathPattern(pattern)) for this gateway's mux (its
// incomingHeader matcher, no metadata annotators): the same outgoing
// metadata — authorization, the forwarded headers (x-request-id),
// x-forwarded-host, x-forwarded-for, each value checked as grpc-gateway
// checks it — and the path pattern, built in one map. A request with a
// grpc-timeout header, a binary header the matcher forwards, or a default
// timeout set goes to runtime.AnnotateContext itself. (The RPC name that
// AnnotateContext also stores has no setter outside grpc-gateway; nothing
// here or in the services reads it.)
func (s *Server) annotate(ctx context.Context, r *http.Request, rpc, pattern string) (context.Context, error) {
	if runtime.DefaultContextTimeout != 0 || r.Header.Get(hdrGrpcTimeout) != "" {
		return runtime.AnnotateContext(ctx, s.mux, r, rpc, runtime.WithHTTPPathPattern(pattern))
	}
	var md metadata.MD
	add := func(k, v string) {
		if md == nil {
			md = make(metadata.MD, 4)
		}
		md[k] = append(md[k], v)
	}
	for _, v := range r.Header[hdrAuthorization] {
		if validMetadataText(v) {
			add("authorization", v)
		}
	}
	for key, vals := range r.Header {
		key = textproto.CanonicalMIMEHeaderKey(key)
		if key == hdrXForwardedFor || key == hdrXForwardedHost {
			continue
		}
		h, ok := incomingHeader(key)
		if !ok {
			continue
		}
		if strings.EqualFold(h, hdrXForwardedFor) || strings.EqualFold(h, hdrXForwardedHost) || !validMetadataKey(h) {
			continue
		}
		if strings.HasSuffix(key, "-Bin") {
			return runtime.AnnotateContext(ctx, s.mux, r, rpc, runtime.WithHTTPPathPattern(pattern))
		}
		for _, v := range vals {
			if validMetadataText(v) {
				add(strings.ToLower(h), v)
			}
		}
	}
	if host := r.Header.Get(hdrXForwardedHost); host != "" && validMetadataText(host) {
		add("x-forwarded-host", host)
	} else if r.Host != "" && validMetadataText(r.Host) {
		add("x-forwarded-host", r.Host)
	}
	xff, n := "", 0
	join := func(v string) {
		if n == 0 {
			xff = v
		} else {
			xff += ", " + v
		}
		n++
	}
	for _, v := range r.Header[hdrXForwardedFor] {
		if validMetadataText(v) {
			join(v)
		}
	}
	if addr := r.RemoteAddr; addr != "" {
		if ip, _, err := net.SplitHostPort(addr); err == nil && validMetadataText(ip) {
			join(ip)
		}
	}
	if n > 0 {
		add("x-forwarded-for", xff)
	}
	ctx = runtime.WithHTTPPathPattern(pattern)(ctx)
	if len(md) == 0 {
		return ctx, nil
	}
	return metadata.NewOutgoingContext(ctx, md), nil
}

// validMetadataText is grpc-gateway's check of a metadata value: printable
// ASCII.
func validMetadataText(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return false
		}
	}
	return true
}

// validMetadataKey is grpc-gateway's check of a metadata key.
func validMetadataKey(k string) bool {
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
