package auth

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// MetadataKey is the gRPC metadata key of the bearer token.
const MetadataKey = "authorization"

// TokenFromMetadata returns the bearer token of an incoming call (reading
// the one key: FromIncomingContext would copy all of the call's metadata).
func TokenFromMetadata(ctx context.Context) string {
	for _, v := range metadata.ValueFromIncomingContext(ctx, MetadataKey) {
		if t, ok := BearerToken(v); ok {
			return t
		}
	}
	return ""
}

// BearerToken parses "Bearer <token>".
func BearerToken(header string) (string, bool) {
	const p = "bearer "
	if len(header) > len(p) && strings.EqualFold(header[:len(p)], p) {
		return strings.TrimSpace(header[len(p):]), true
	}
	return "", false
}

// Outgoing returns ctx with the caller's token attached for a call to
// another service, so that service authorizes the same caller.
func Outgoing(ctx context.Context) context.Context {
	v := Bearer(ctx)
	if v == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, MetadataKey, v)
}

// Bearer is the MetadataKey value that forwards the token of ctx's
// identity ("Bearer <token>"), or "" when it has none.
func Bearer(ctx context.Context) string {
	id, ok := FromContext(ctx)
	if !ok || id.Token == "" {
		return ""
	}
	return "Bearer " + id.Token
}

// ForwardUnary is a client interceptor that forwards the caller's token.
func ForwardUnary() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if !hasOutgoingToken(ctx) {
			ctx = Outgoing(ctx)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// ForwardStream is the streaming twin of ForwardUnary.
func ForwardStream() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		if !hasOutgoingToken(ctx) {
			ctx = Outgoing(ctx)
		}
		return streamer(ctx, desc, cc, method, opts...)
	}
}

func hasOutgoingToken(ctx context.Context) bool {
	return len(metadata.ValueFromOutgoingContext(ctx, MetadataKey)) > 0
}
