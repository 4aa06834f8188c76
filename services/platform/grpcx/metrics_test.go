package grpcx

import (
	"bytes"
	"context"
	"errors"
	"io"
	"regexp"
	"testing"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// TestServerMetricsAreGRPCProms: the same calls give the same series, with
// the same values, as go-grpc-middleware's ServerMetrics (which this
// package used before): names, help, labels, counts per code, messages
// sent and received, the histogram's buckets and counts (its sums are
// durations), and the series InitializeMetrics creates at zero.
func TestServerMetricsAreGRPCProms(t *testing.T) {
	ours := newServerMetrics(handlingBuckets)
	theirs := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramBuckets(handlingBuckets)))

	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ours.InitializeMetrics(srv)
	theirs.InitializeMetrics(srv)

	unaryErrs := []error{nil, nil, status.Error(codes.NotFound, "x"), statusErr(codes.PermissionDenied), context.Canceled,
		context.DeadlineExceeded, errors.New("plain"), status.Error(codes.Code(20), "odd code"), nil}
	for _, ic := range []grpc.UnaryServerInterceptor{ours.UnaryServerInterceptor(), theirs.UnaryServerInterceptor()} {
		for i, err := range unaryErrs {
			method := "/clinicchat.delivery.v1.DeliveryService/CreateMessage"
			if i%3 == 1 {
				method = "/grpc.health.v1.Health/Check"
			}
			_, got := ic(context.Background(), "req", &grpc.UnaryServerInfo{FullMethod: method},
				func(context.Context, any) (any, error) { return "resp", err })
			require.Equal(t, err, got)
		}
		_, _ = ic(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "nonsense"},
			func(context.Context, any) (any, error) { return nil, nil })
	}
	for _, ic := range []grpc.StreamServerInterceptor{ours.StreamServerInterceptor(), theirs.StreamServerInterceptor()} {
		for _, info := range []*grpc.StreamServerInfo{
			{FullMethod: "/clinicchat.attachment.v1.AttachmentService/UploadAttachment", IsClientStream: true},
			{FullMethod: "/grpc.health.v1.Health/Watch", IsServerStream: true},
			{FullMethod: "/x.Y/Both", IsClientStream: true, IsServerStream: true},
		} {
			err := ic(nil, &fakeStream{recv: 3}, info, func(_ any, ss grpc.ServerStream) error {
				for ss.RecvMsg(nil) == nil {
				}
				require.NoError(t, ss.SendMsg("a"))
				require.Error(t, ss.SendMsg("fail"))
				require.NoError(t, ss.SendMsg("b"))
				return status.Error(codes.ResourceExhausted, "limit")
			})
			require.Equal(t, codes.ResourceExhausted, status.Code(err))
		}
	}

	require.Equal(t, exposition(t, theirs), exposition(t, ours))
	require.Contains(t, exposition(t, ours),
		`grpc_server_handled_total{grpc_code="NotFound",grpc_method="CreateMessage",grpc_service="clinicchat.delivery.v1.DeliveryService",grpc_type="unary"} 1`)
}

func statusErr(c codes.Code) error { return status.Error(c, "e") }

// exposition is c's text exposition without the histograms' sums and
// bucket counts (durations).
func exposition(t *testing.T, c prometheus.Collector) string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var b bytes.Buffer
	for _, mf := range mfs {
		_, err := expfmt.MetricFamilyToText(&b, mf)
		require.NoError(t, err)
	}
	out := regexp.MustCompile(`(?m)^grpc_server_handling_seconds_sum.*\n`).ReplaceAllString(b.String(), "")
	return regexp.MustCompile(`(?m)^(grpc_server_handling_seconds_bucket\{.*\}) \d+$`).ReplaceAllString(out, "$1")
}

// fakeStream receives recv messages, then io.EOF, and fails a send of
// "fail".
type fakeStream struct {
	grpc.ServerStream
	recv int
}

func (s *fakeStream) Context() context.Context { return context.Background() }

func (s *fakeStream) RecvMsg(any) error {
	if s.recv == 0 {
		return io.EOF
	}
	s.recv--
	return nil
}

func (s *fakeStream) SendMsg(m any) error {
	if m == "fail" {
		return errors.New("send failed")
	}
	return nil
}
