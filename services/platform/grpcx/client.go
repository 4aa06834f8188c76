package grpcx

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	_ "google.golang.org/grpc/balancer/ringhash" // AffineServiceConfig's balancer
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// ServiceConfig is every peer connection's gRPC service config: calls are
// spread over every address the target resolves to (round_robin), and a call
// that fails UNAVAILABLE (the replica it went to died or is draining) is
// retried on another. Every RPC is idempotent — reads, set-style writes, and
// sends that carry a requestId — except an upload, which is never retried.
const ServiceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [
    {
      "name": [
        {"service": "clinicchat.conversation.v1.ConversationService"},
        {"service": "clinicchat.delivery.v1.DeliveryService"},
        {"service": "clinicchat.attachment.v1.AttachmentService"},
        {"service": "clinicchat.preferences.v1.PreferencesService"},
        {"service": "clinicchat.audit.v1.AuditService"},
        {"service": "clinicchat.artifact.v1.ArtifactProviderService"},
        {"service": "grpc.health.v1.Health"}
      ],
      "retryPolicy": {
        "maxAttempts": 4,
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"]
      }
    },
    {
      "name": [{"service": "clinicchat.attachment.v1.AttachmentService", "method": "UploadAttachment"}]
    }
  ]
}`

// AffinityHeader is the metadata key of a call's affinity: on a connection
// from DialAffine, calls that carry the same value go to the same replica
// while it is up.
const AffinityHeader = "x-clinicchat-affinity"

// AffineServiceConfig is ServiceConfig with ring_hash instead of
// round_robin (gRPC's own balancer, gRFC A76): a call with AffinityHeader
// goes to the replica its value hashes to on the ring (the next one up when
// that one is down, and back when it returns); a call without it to a
// random ready replica.
var AffineServiceConfig = strings.Replace(ServiceConfig, `[{"round_robin": {}}]`,
	`[{"ring_hash_experimental": {"requestHashHeader": "`+AffinityHeader+`"}}]`, 1)

// DialAffine is Dial with AffineServiceConfig: for delivery, whose replicas
// batch a thread's sends best, and write them a round trip cheaper, when
// one replica takes all of them (the gateway sets the header to the thread).
func DialAffine(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return Dial(target, append(opts, grpc.WithDefaultServiceConfig(AffineServiceConfig))...)
}

// Keepalive pings an idle connection so that a peer which vanished without
// closing it (a node lost, a network partition) is noticed within ~40 s
// rather than at the next call's deadline. NewServer permits this rate.
var Keepalive = keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}

// Dial opens a client connection to a peer service. target is
//   - host:port, resolved through DNS (a Kubernetes headless Service name
//     resolves to every ready pod) and re-resolved when a connection drops;
//   - a comma-separated list of host:port, one per replica (static);
//   - or any gRPC target with a scheme (dns:///, passthrough:///, …).
//
// Calls are balanced round-robin over the addresses and retried on another
// when one answers UNAVAILABLE (ServiceConfig). The caller's bearer token is
// forwarded on every call (traced when tracing is on), so between services it travels over TLS in
// production: pass TLSConfig.DialOptions (a later transport credential
// replaces the plaintext default).
func Dial(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	target, extra, err := Target(target)
	if err != nil {
		return nil, err
	}
	opts = append(append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(auth.ForwardUnary()),
		grpc.WithChainStreamInterceptor(auth.ForwardStream()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(8 << 20)),
		grpc.WithDefaultServiceConfig(ServiceConfig),
		grpc.WithKeepaliveParams(Keepalive),
		grpc.WithInitialWindowSize(StreamWindow),
		grpc.WithInitialConnWindowSize(ConnWindow),
	}, append(telemetry.GRPCDialOptions(), extra...)...), opts...)
	return grpc.NewClient(target, opts...)
}

var staticSeq atomic.Uint64

// Target turns a peer address setting into a gRPC target and the dial
// options it needs (a resolver for a static list).
func Target(addr string) (string, []grpc.DialOption, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return "", nil, fmt.Errorf("empty address")
	}
	if strings.Contains(addr, "://") {
		return addr, nil, nil
	}
	if !strings.Contains(addr, ",") {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return "", nil, fmt.Errorf("address %q: %w", addr, err)
		}
		return "dns:///" + addr, nil, nil
	}
	var state resolver.State
	for _, a := range strings.Split(addr, ",") {
		a = strings.TrimSpace(a)
		if _, _, err := net.SplitHostPort(a); err != nil {
			return "", nil, fmt.Errorf("address %q: %w", a, err)
		}
		host, _, _ := net.SplitHostPort(a)
		// Each replica's certificate is checked against its own host.
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a, ServerName: host})
	}
	// A resolver of its own per connection: it answers with the list, always.
	r := manual.NewBuilderWithScheme(fmt.Sprintf("clinicchat-static-%d", staticSeq.Add(1)))
	r.InitialState(state)
	return r.Scheme() + ":///" + strings.ReplaceAll(addr, ",", "_"), []grpc.DialOption{grpc.WithResolvers(r)}, nil
}

// DialListener connects to an in-process listener (bufconn) by its dialer.
func DialListener(dial func(context.Context) (net.Conn, error)) (*grpc.ClientConn, error) {
	return Dial("passthrough:///inprocess", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return dial(ctx)
	}))
}

// ReadLeaseHeader is the response header in which a server lets its caller
// keep the answer for a while: the lease in microseconds, counted by the
// caller from before it asked. The server acknowledges no write that could
// change the answer before the lease has run out (the preferences service's
// GetPatient: preferences.Config.ReadLease).
const ReadLeaseHeader = "clinicchat-read-lease-us"
