package bench_test

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/cmd/clinicchat/bench"
	"github.com/clinicchat/clinicchat/services/platform/ratelimit"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// TestBenchFindsNothingLost is CI's short load run: a few hundred messages
// through the gateway and over gRPC against a real all-in-one, with the
// recipients' streams open and read receipts flowing. It fails on any lost
// or duplicated message or any error, never on a time.
func TestBenchFindsNothingLost(t *testing.T) {
	cfg := allinone.Config{HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", DataDir: t.TempDir(), Dev: true,
		ArchiveAfter: 8760 * time.Hour, ArchiveSweepInterval: time.Hour, StepUpWindow: 5 * time.Minute, DrainTimeout: 5 * time.Second,
		Limits: ratelimit.Config{SendsPerSecond: 1e9, SendBurst: 1e9, UploadBytesPerMinute: ratelimit.DefaultUploadBytesPerMin}} // load, not people
	in, err := allinone.Start(context.Background(), cfg, testkit.Logger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = in.Stop() })

	for _, tc := range []struct {
		name     string
		grpcAddr string
		messages int
	}{
		{"http", "", 300},
		{"grpc", in.GRPCAddr, 150},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			res, err := bench.Run(ctx, bench.Config{HTTPURL: "http://" + in.HTTPAddr, GRPCAddr: tc.grpcAddr, Senders: 4,
				Messages: tc.messages, TextBytes: 64, MarkReadEvery: 5, Wait: time.Minute, ServerPID: os.Getpid()})
			require.NoError(t, err)
			var out bytes.Buffer
			res.WriteText(&out)
			t.Log("\n" + out.String())
			require.Equal(t, tc.messages, res.Acked, "every send acknowledged")
			require.Zero(t, res.Lost, "acknowledged but never on the recipient's stream")
			require.Zero(t, res.Duplicated, "seen twice on a stream")
			require.Empty(t, res.Errors)
			require.Zero(t, res.Resets)
			require.Equal(t, tc.messages, res.Stream.Count)
			require.Positive(t, res.Receipts, "recipients marked their threads read")
			require.NotNil(t, res.Server)
			require.Positive(t, res.Server.CPUMsPerMessage)
			require.False(t, res.Failed())
		})
	}
}

// TestBenchRefusesBadFlags: every problem is reported at once.
func TestBenchRefusesBadFlags(t *testing.T) {
	var stderr bytes.Buffer
	err := bench.Main([]string{"--url", "ftp://x", "--senders", "0", "--messages", "0", "--text-bytes", "20000"}, &bytes.Buffer{}, &stderr)
	require.Error(t, err)
	for _, want := range []string{"--url", "--senders", "--messages", "--text-bytes"} {
		require.Contains(t, err.Error(), want)
	}
}
