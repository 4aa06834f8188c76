// Package grpcx builds clinicchat's gRPC servers and client connections: bearer
// token verification, typed-error mapping with internal errors masked behind an
// error id, panic recovery, health and reflection.
package grpcx

import (
	"context"
	"errors"
	"net"
	"runtime/debug"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// Server is a gRPC server with health and reflection registered.
type Server struct {
	*grpc.Server
	Health *health.Server
	// Metrics are the server's Prometheus metrics (grpc_server_started_total,
	// grpc_server_handled_total by code, grpc_server_handling_seconds, …),
	// counted outside every other interceptor, so codes are the ones the
	// client sees. Register it on the /metrics registry.
	Metrics *ServerMetrics
	inproc  *inProcess
}

// NewServer returns a server whose every call (but health and reflection) must
// carry a bearer token that verifier accepts. When tracing is on (telemetry)
// every call is traced (otelgrpc). Its services are also reachable in
// process (InProcess), through the same interceptors: those given with
// Intercept, not those of a plain grpc.ChainUnaryInterceptor option.
func NewServer(log *zap.Logger, verifier auth.Verifier, opts ...grpc.ServerOption) *Server {
	i := interceptors{log: log, verifier: auth.NewCachingVerifier(verifier, 0)}
	m := newServerMetrics(handlingBuckets)
	unary := []grpc.UnaryServerInterceptor{m.UnaryServerInterceptor(), i.unary}
	stream := []grpc.StreamServerInterceptor{m.StreamServerInterceptor(), i.stream}
	for _, o := range opts {
		if o, ok := o.(interceptOption); ok {
			if o.unary != nil {
				unary = append(unary, o.unary)
			}
			if o.stream != nil {
				stream = append(stream, o.stream)
			}
		}
	}
	var tracing []grpc.ServerOption
	serverStats := telemetry.GRPCServerHandler()
	if serverStats != nil {
		tracing = append(tracing, grpc.StatsHandler(serverStats))
	}
	opts = append([]grpc.ServerOption{
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		grpc.MaxRecvMsgSize(8 << 20),
		// Peers ping idle connections (Keepalive, every 30 s); a client that
		// pings more often than every 10 s loses the connection. Idle
		// connections close after 5 minutes, and every connection is
		// recycled after 5 minutes (with a grace for calls in flight) so
		// that clients re-resolve DNS and spread over replicas added since
		// they connected. A connection holds at most MaxConcurrentStreams
		// calls, and the handshake must finish within 10 s.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 5 * time.Minute,
			MaxConnectionAge: 5 * time.Minute, MaxConnectionAgeGrace: 10 * time.Minute,
			Time: time.Minute, Timeout: 20 * time.Second}),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.ConnectionTimeout(10 * time.Second),
		grpc.MaxHeaderListSize(64 << 10),
		// Calls run on goroutines kept for the next call (more start when
		// they are all busy): a new goroutine per call grew its stack again
		// through the interceptors, the handler and SQLite every time.
		grpc.NumStreamWorkers(StreamWorkers),
		// Fixed flow-control windows (StreamWindow): no BDP estimation,
		// whose ping and ping ack went with nearly every call.
		grpc.InitialWindowSize(StreamWindow),
		grpc.InitialConnWindowSize(ConnWindow),
	}, append(tracing, opts...)...)
	s := &Server{Server: grpc.NewServer(opts...), Health: health.NewServer(), Metrics: m,
		inproc: newInProcess(unary, stream, serverStats, telemetry.GRPCClientHandler())}
	healthpb.RegisterHealthServer(s, s.Health)
	reflection.Register(s.Server)
	return s
}

// handlingBuckets are the buckets of grpc_server_handling_seconds: the send
// path's floor is ~1 ms, its SLO well under a second.
var handlingBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// InitMetrics creates every method's series at zero (call it after every
// service is registered), so rates and alerts see them before the first call.
func (s *Server) InitMetrics() { s.Metrics.InitializeMetrics(s.Server) }

// StreamWorkers is how many goroutines a server keeps to run calls on.
const StreamWorkers = 32

// MaxConcurrentStreams bounds the calls in flight on one connection.
const MaxConcurrentStreams = 1000

// MaxConnections bounds the connections a public gRPC listener accepts at
// once (LimitListener).
const MaxConnections = 4096

// LimitListener accepts at most MaxConnections connections at once on lis.
func LimitListener(lis net.Listener) net.Listener { return netutil.LimitListener(lis, MaxConnections) }

// Shutdown marks every service NOT_SERVING and stops gracefully, forcing a
// stop after timeout.
func (s *Server) Shutdown(timeout time.Duration) {
	s.Health.Shutdown()
	done := make(chan struct{})
	go func() { s.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		s.Stop()
		<-done
	}
}

type interceptors struct {
	log      *zap.Logger
	verifier auth.Verifier
}

func public(method string) bool {
	return strings.HasPrefix(method, "/grpc.health.v1.Health/") || strings.HasPrefix(method, "/grpc.reflection.")
}

func (i interceptors) authenticate(ctx context.Context, method string) (context.Context, error) {
	if public(method) {
		return ctx, nil
	}
	tok := auth.TokenFromMetadata(ctx)
	if tok == "" {
		return ctx, errs.Unauthenticated("Sign in again: the request carries no bearer token")
	}
	id, err := i.verifier.Verify(ctx, tok)
	if err != nil {
		i.log.Debug("token rejected", zap.String(logkeys.Method, method), zap.Error(err))
		return ctx, errs.Unauthenticated("Sign in again: the bearer token is not valid")
	}
	return auth.WithIdentity(ctx, id), nil
}

func (i interceptors) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer i.recover(info.FullMethod, &err)
	ctx, err = i.authenticate(ctx, info.FullMethod)
	if err == nil {
		resp, err = handler(ctx, req)
	}
	return resp, i.toStatus(ctx, info.FullMethod, err)
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w wrappedStream) Context() context.Context { return w.ctx }

func (i interceptors) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer i.recover(info.FullMethod, &err)
	ctx, err := i.authenticate(ss.Context(), info.FullMethod)
	if err == nil {
		err = handler(srv, wrappedStream{ServerStream: ss, ctx: ctx})
	}
	return i.toStatus(ctx, info.FullMethod, err)
}

func (i interceptors) recover(method string, err *error) {
	if r := recover(); r != nil {
		id := ids.New()
		i.log.Error("panic", zap.String(logkeys.Method, method), zap.String(logkeys.ErrorID, id),
			zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
		*err = status.Errorf(codes.Internal, "Something went wrong on our side (error id %s)", id)
	}
}

// toStatus maps typed errors to their status, passes statuses through, and
// masks everything else as INTERNAL with an error id, logging the original.
func (i interceptors) toStatus(ctx context.Context, method string, err error) error {
	if err == nil {
		return nil
	}
	var e *errs.Error
	if errors.As(err, &e) {
		return e.GRPCStatus().Err()
	}
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, "request canceled")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, "request timed out")
	}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.Internal, codes.Unknown, codes.DataLoss:
		default:
			return err
		}
	}
	if sqldb.Unavailable(err) {
		// The database restarts or fails over: the caller may retry (with
		// the same requestId for a send).
		i.log.Warn("database unavailable", zap.String(logkeys.Method, method), zap.Error(err))
		return status.Error(codes.Unavailable, "The database is unavailable; try again shortly")
	}
	id := ids.New()
	fields := []zap.Field{zap.String(logkeys.Method, method), zap.String(logkeys.ErrorID, id), zap.Error(err)}
	if who, ok := auth.FromContext(ctx); ok {
		fields = append(fields, zap.String(logkeys.Practice, who.Practice), zap.String(logkeys.Actor, who.Principal()))
	}
	i.log.Error("internal error", fields...)
	return status.Errorf(codes.Internal, "Something went wrong on our side (error id %s)", id)
}

// StreamWindow and ConnWindow are the HTTP/2 flow-control windows of every
// server and peer connection, per stream and per connection. Setting them
// turns off grpc-go's BDP estimation, which otherwise sends a PING with the
// first DATA frame after each ack and has the peer answer it: on calls a
// few hundred bytes long, one at a time, that was a ping and an ack (a
// write and a read, and often a wake-up, on each side) for nearly every
// call. The windows are what BDP estimation would grow to on a LAN: 1 MiB
// per stream (an 8 MiB upload still streams, the window refills as it is
// read) and 8 MiB per connection.
const (
	StreamWindow = 1 << 20
	ConnWindow   = 8 << 20
)
