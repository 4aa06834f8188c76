package grpcx_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/clinicchat/clinicchat/services/platform/grpcx"
)

// BenchmarkUnaryCall is one gRPC health call on an open loopback
// connection, plaintext and over mutual TLS: the per-call cost TLS adds
// between the services (the handshake is once per connection, which lives
// up to 5 minutes).
//
//	go test ./services/platform/grpcx -run '^$' -bench UnaryCall -benchtime 20000x
func BenchmarkUnaryCall(b *testing.B) {
	_, _, server, client := newPKI(b)
	for _, tc := range []struct {
		name   string
		server grpcx.TLSConfig
		client grpcx.TLSConfig
	}{{"plaintext", grpcx.TLSConfig{}, grpcx.TLSConfig{}}, {"mutual-TLS", server, client}} {
		b.Run(tc.name, func(b *testing.B) {
			addr := startTLSServer(b, tc.server)
			opts, err := tc.client.DialOptions()
			require.NoError(b, err)
			cc, err := grpcx.Dial(addr, opts...)
			require.NoError(b, err)
			defer cc.Close()
			h := healthpb.NewHealthClient(cc)
			ctx := context.Background()
			_, err = h.Check(ctx, &healthpb.HealthCheckRequest{}) // connect and handshake
			require.NoError(b, err)
			b.ReportAllocs()
			b.ResetTimer()
			cpu := cpuTime()
			for range b.N {
				if _, err := h.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// cpuTime is the process's user+system CPU time (client and server both
// run here): it does not grow when other processes share the cores.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
