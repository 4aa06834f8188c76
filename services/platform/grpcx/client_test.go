package grpcx_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

type replica struct {
	addr  string
	srv   *grpcx.Server
	calls atomic.Int64
}

func startReplica(t *testing.T) *replica {
	t.Helper()
	_, verifier := testkit.NewTokens()
	r := &replica{}
	r.srv = grpcx.NewServer(testkit.Logger(t), verifier, grpc.ChainUnaryInterceptor(
		func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			r.calls.Add(1)
			return h(ctx, req)
		}))
	r.srv.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r.addr = lis.Addr().String()
	go func() { _ = r.srv.Serve(lis) }()
	t.Cleanup(r.srv.Stop)
	return r
}

// A comma-separated list of replicas: calls are spread over both, and when
// one dies every call still succeeds on the other.
func TestDialListBalancesAndFailsOver(t *testing.T) {
	a, b := startReplica(t), startReplica(t)
	cc, err := grpcx.Dial(a.addr + "," + b.addr)
	require.NoError(t, err)
	defer cc.Close()
	health := healthpb.NewHealthClient(cc)
	check := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	require.Eventually(t, func() bool {
		require.NoError(t, check())
		return a.calls.Load() > 0 && b.calls.Load() > 0
	}, 10*time.Second, time.Millisecond, "round robin reaches both replicas")

	a.srv.Stop() // closes every connection at once, as a crash would
	before := b.calls.Load()
	for range 50 {
		require.NoError(t, check(), "the other replica answers")
	}
	require.Equal(t, before+50, b.calls.Load())
}

// DialAffine: calls with the same AffinityHeader go to one replica, the
// keys spread over the replicas, a key whose replica dies moves to one other
// replica and every call still succeeds, and calls without it are served.
func TestDialAffineKeepsAKeyOnOneReplica(t *testing.T) {
	require.Contains(t, grpcx.AffineServiceConfig, "ring_hash_experimental")
	rs := []*replica{startReplica(t), startReplica(t), startReplica(t)}
	cc, err := grpcx.DialAffine(rs[0].addr + "," + rs[1].addr + "," + rs[2].addr)
	require.NoError(t, err)
	defer cc.Close()
	health := healthpb.NewHealthClient(cc)
	// where sends n calls with key (none: "") and returns the replicas they
	// reached, as indexes into rs.
	where := func(key string, n int) map[int]bool {
		got := map[int]bool{}
		for range n {
			before := make([]int64, len(rs))
			for i, r := range rs {
				before[i] = r.calls.Load()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if key != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, grpcx.AffinityHeader, key)
			}
			_, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
			cancel()
			require.NoError(t, err)
			for i, r := range rs {
				if r.calls.Load() != before[i] {
					got[i] = true
				}
			}
		}
		return got
	}
	owner := map[string]int{}
	used := map[int]bool{}
	for k := range 24 {
		key := fmt.Sprintf("conversations/c%d", k)
		got := where(key, 4)
		require.Len(t, got, 1, "key %s: one replica", key)
		for i := range got {
			owner[key], used[i] = i, true
		}
	}
	require.Greater(t, len(used), 1, "the keys spread over the replicas")
	require.NotEmpty(t, where("", 3), "a call without a key is served")

	dead := owner["conversations/c0"]
	rs[dead].srv.Stop() // closes every connection at once, as a crash would
	got := where("conversations/c0", 10)
	require.Len(t, got, 1, "the key moved to one other replica")
	require.False(t, got[dead])
	for key, i := range owner {
		if i != dead {
			require.Equal(t, map[int]bool{i: true}, where(key, 2), "key %s stays where it was", key)
		}
	}
}

func TestTarget(t *testing.T) {
	for addr, want := range map[string]string{
		"delivery:9090":           "dns:///delivery:9090",
		"127.0.0.1:9001":          "dns:///127.0.0.1:9001",
		"dns:///delivery:9090":    "dns:///delivery:9090",
		"passthrough:///x:1":      "passthrough:///x:1",
		"127.0.0.1:1,127.0.0.1:2": "clinicchat-static-",
	} {
		got, _, err := grpcx.Target(addr)
		require.NoError(t, err, addr)
		require.Contains(t, got, want, addr)
	}
	for _, bad := range []string{"", "delivery", "a:1,b"} {
		_, _, err := grpcx.Target(bad)
		require.Error(t, err, bad)
	}
}
