package grpcx

import (
	"context"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/clinicchat/clinicchat/services/platform/auth"
)

// Dial opens a client connection to a peer service at target (host:port or
// any gRPC target). The caller's bearer token is forwarded on every call.
// Transport security between services is the mesh's job in production.
func Dial(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(auth.ForwardUnary()),
		grpc.WithChainStreamInterceptor(auth.ForwardStream()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(8 << 20)),
	}, opts...)
	return grpc.NewClient(target, opts...)
}

// DialListener connects to an in-process listener (bufconn) by its dialer.
func DialListener(dial func(context.Context) (net.Conn, error)) (*grpc.ClientConn, error) {
	return Dial("passthrough:///inprocess", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return dial(ctx)
	}))
}
