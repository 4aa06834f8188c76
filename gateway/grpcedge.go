package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"

	attachmentv1 "github.com/clinicchat/clinicchat/proto/clinicchat/attachment/v1"
	auditv1 "github.com/clinicchat/clinicchat/proto/clinicchat/audit/v1"
	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// EdgeServices are the public gRPC services of the edge, by full name, with
// the upstream (as in UpstreamNames) that serves each.
var EdgeServices = map[string]string{
	conversationv1.ConversationService_ServiceDesc.ServiceName: "conversation",
	deliveryv1.DeliveryService_ServiceDesc.ServiceName:         "delivery",
	preferencesv1.PreferencesService_ServiceDesc.ServiceName:   "preferences",
	attachmentv1.AttachmentService_ServiceDesc.ServiceName:     "attachment",
	auditv1.AuditService_ServiceDesc.ServiceName:               "audit",
}

// GRPCEdge is the public gRPC endpoint of a distributed deployment: one
// address serving every public service (as the all-in-one's --grpc-addr
// does), with gRPC health and reflection, for practice systems. It is a
// transparent proxy: each call is forwarded, frame by frame and in both
// directions, to the service that owns it, with the caller's metadata (the
// bearer token); the services verify the token and authorize the call
// themselves, so the edge never decodes a message.
type GRPCEdge struct {
	*grpc.Server
	// Health answers for the edge itself; it turns NOT_SERVING at Shutdown.
	Health *health.Server
	routes map[string]grpc.ClientConnInterface
}

// NewGRPCEdge returns the edge routing each service of EdgeServices to the
// upstream connection of that name (keys of UpstreamNames).
func NewGRPCEdge(upstreams map[string]grpc.ClientConnInterface, serverOpts ...grpc.ServerOption) (*GRPCEdge, error) {
	e := &GRPCEdge{routes: map[string]grpc.ClientConnInterface{}, Health: health.NewServer()}
	for svc, name := range EdgeServices {
		cc, ok := upstreams[name]
		if !ok || cc == nil {
			return nil, fmt.Errorf("grpc edge: no upstream %s for %s", name, svc)
		}
		e.routes[svc] = cc
	}
	e.Server = grpc.NewServer(append(append(telemetry.GRPCPublicServerOptions(), // traced when tracing is on
		grpc.ForceServerCodec(frameCodec{}),
		grpc.UnknownServiceHandler(e.forward),
		grpc.MaxRecvMsgSize(8<<20),
		// Per connection; every call is also bounded by the services' own
		// per-identity limits.
		grpc.MaxConcurrentStreams(100),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 15 * time.Minute, Time: time.Minute, Timeout: 20 * time.Second}),
	), serverOpts...)...)
	healthpb.RegisterHealthServer(e.Server, e.Health)
	opts := reflection.ServerOptions{Services: e, DescriptorResolver: protoregistry.GlobalFiles, ExtensionResolver: protoregistry.GlobalTypes}
	reflectionv1.RegisterServerReflectionServer(e.Server, reflection.NewServerV1(opts))
	reflectionv1alpha.RegisterServerReflectionServer(e.Server, reflection.NewServer(opts))
	return e, nil
}

// GetServiceInfo lists the services reflection advertises: the proxied ones
// (their descriptors are compiled in) and the edge's own.
func (e *GRPCEdge) GetServiceInfo() map[string]grpc.ServiceInfo {
	out := e.Server.GetServiceInfo()
	for svc := range e.routes {
		out[svc] = grpc.ServiceInfo{Metadata: "proxied"}
	}
	return out
}

// Shutdown marks the edge NOT_SERVING and stops gracefully, forcing a stop
// after timeout.
func (e *GRPCEdge) Shutdown(timeout time.Duration) {
	e.Health.Shutdown()
	done := make(chan struct{})
	go func() { e.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		e.Stop()
		<-done
	}
}

// hopHeaders are request headers of the transport, not of the call.
var hopHeaders = map[string]bool{"content-type": true, "user-agent": true, "te": true, "host": true, "connection": true,
	// A caller's trace context never reaches the services: the edge's own
	// span (linked to it) is the services' parent when tracing is on.
	"traceparent": true, "tracestate": true, "baggage": true}

// forward proxies one call of any kind (unary or streaming either way).
func (e *GRPCEdge) forward(_ any, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "no method")
	}
	svc := strings.TrimPrefix(method, "/")
	if i := strings.LastIndex(svc, "/"); i > 0 {
		svc = svc[:i]
	}
	cc, ok := e.routes[svc]
	if !ok {
		return status.Errorf(codes.Unimplemented, "unknown service %s", svc)
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	in, _ := metadata.FromIncomingContext(ctx)
	out := metadata.MD{}
	for k, v := range in {
		if strings.HasPrefix(k, ":") || strings.HasPrefix(k, "grpc-") || hopHeaders[k] {
			continue
		}
		out[k] = v
	}
	ctx = metadata.NewOutgoingContext(ctx, out)
	cs, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method, grpc.ForceCodec(frameCodec{}))
	if err != nil {
		return err
	}

	// Client → upstream, until the client half-closes.
	var upErr error
	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		for {
			f := &frame{}
			if err := ss.RecvMsg(f); err != nil {
				if errors.Is(err, io.EOF) {
					_ = cs.CloseSend()
				} else {
					upErr = err
					cancel() // abandon the upstream call
				}
				return
			}
			if err := cs.SendMsg(f); err != nil {
				return // the upstream ended the call: its status comes from RecvMsg
			}
		}
	}()

	// Upstream → client: headers, messages, then the trailer and status.
	for first := true; ; first = false {
		f := &frame{}
		err := cs.RecvMsg(f)
		if first {
			if md, herr := cs.Header(); herr == nil && len(md) > 0 {
				if err := ss.SendHeader(md); err != nil {
					return err
				}
			}
		}
		if err != nil {
			ss.SetTrailer(cs.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			if status.Code(err) == codes.Canceled && ss.Context().Err() == nil {
				<-upDone
				if upErr != nil {
					return upErr
				}
			}
			return err
		}
		if err := ss.SendMsg(f); err != nil {
			return err
		}
	}
}

// frame is one message on the wire, passed on undecoded.
type frame struct{ b []byte }

// frameCodec passes frames through as bytes and codes anything else (the
// edge's own health and reflection services) as protobuf.
type frameCodec struct{}

func (frameCodec) Marshal(v any) ([]byte, error) {
	if f, ok := v.(*frame); ok {
		return f.b, nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("grpc edge codec: cannot marshal %T", v)
	}
	return proto.Marshal(m)
}

func (frameCodec) Unmarshal(data []byte, v any) error {
	if f, ok := v.(*frame); ok {
		f.b = append([]byte(nil), data...)
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("grpc edge codec: cannot unmarshal into %T", v)
	}
	return proto.Unmarshal(data, m)
}

// Name is "proto": the frames are protobuf, and clients send
// application/grpc+proto (or plain application/grpc).
func (frameCodec) Name() string { return "proto" }
