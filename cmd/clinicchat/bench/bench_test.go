package bench_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
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
	in := startAllInOne(t)

	for _, tc := range []struct {
		name     string
		grpcAddr string
		messages int
		prefill  int
	}{
		{"http", "", 300, 0},
		{"grpc", in.GRPCAddr, 150, 0},
		{"long threads", in.GRPCAddr, 100, 60}, // the prefill is not counted
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			res, err := bench.Run(ctx, bench.Config{HTTPURL: "http://" + in.HTTPAddr, GRPCAddr: tc.grpcAddr, Senders: 4,
				Messages: tc.messages, TextBytes: 64, MarkReadEvery: 5, Wait: time.Minute, ServerPID: os.Getpid(), Prefill: tc.prefill})
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
			// The timeline: a header and a line a message, in send order,
			// each message once, its ack and stream times positive (a
			// stream may have a message before its ack returns).
			var tl bytes.Buffer
			require.NoError(t, res.WriteTimeline(&tl))
			lines := strings.Split(strings.TrimSpace(tl.String()), "\n")
			require.Len(t, lines, tc.messages+1, "a header and a line a message")
			seen, prev := map[string]bool{}, int64(0)
			for _, l := range lines[1:] {
				f := strings.Split(l, ",")
				require.Len(t, f, 5, l)
				sent, err := strconv.ParseInt(f[0], 10, 64)
				require.NoError(t, err)
				require.GreaterOrEqual(t, sent, prev, "in send order")
				prev = sent
				for _, v := range f[2:4] {
					d, err := strconv.ParseFloat(v, 64)
					require.NoError(t, err)
					require.Positive(t, d, l)
				}
				require.False(t, seen[f[4]], "once: %s", f[4])
				seen[f[4]] = true
			}
			require.Positive(t, res.Receipts, "recipients marked their threads read")
			require.NotNil(t, res.Server)
			require.Positive(t, res.Server.CPUMsPerMessage)
			require.GreaterOrEqual(t, res.Server.CPUMsPerMessageUntilIdle, res.Server.CPUMsPerMessage, "counted on until idle")
			require.False(t, res.Failed())
			// The machine's calibration, every figure measured (no
			// order between them: each is a median taken at its own
			// moment, and a loaded CI machine takes 1-6 µs a system call).
			require.NotNil(t, res.Machine)
			require.Positive(t, res.Machine.SyscallMicros)
			require.Positive(t, res.Machine.WakeupOneCPUMicros)
			if runtime.NumCPU() > 1 {
				require.Positive(t, res.Machine.WakeupTwoCPUsMicros)
			}
			require.Contains(t, out.String(), "a thread wake-up round trip")
		})
	}
}

// TestBenchReadReceipts is read mode against a real all-in-one, through the
// gateway and over gRPC: every markRead advances its thread by one message,
// and each must reach the staff sender's stream as exactly one READ
// receipt. It fails on any lost or duplicated receipt or any error, never
// on a time.
func TestBenchReadReceipts(t *testing.T) {
	in := startAllInOne(t)
	for _, tc := range []struct {
		name     string
		grpcAddr string
	}{{"http", ""}, {"grpc", in.GRPCAddr}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			const receipts = 90
			res, err := bench.Run(ctx, bench.Config{Mode: bench.ModeRead, HTTPURL: "http://" + in.HTTPAddr, GRPCAddr: tc.grpcAddr,
				Senders: 4, Messages: receipts, TextBytes: 64, Wait: time.Minute, ServerPID: os.Getpid(), MetricsURL: "http://" + in.HTTPAddr + "/metrics"})
			require.NoError(t, err)
			var out bytes.Buffer
			res.WriteText(&out)
			t.Log("\n" + out.String())
			require.Equal(t, bench.ModeRead, res.Mode)
			require.Equal(t, receipts, res.Attempted)
			require.Equal(t, receipts, res.Acked, "every markRead acknowledged")
			require.Len(t, res.AckedNames, receipts)
			require.Zero(t, res.Lost, "a markRead acknowledged whose receipt never reached the sender's stream")
			require.Zero(t, res.Duplicated, "a receipt seen twice on the sender's stream")
			require.Zero(t, res.OutOfOrder, "a thread's receipts reached its sender out of message order")
			require.Empty(t, res.Errors)
			require.Equal(t, receipts, res.Receipts)
			// Receipts are gathered and coalesced on their way to the
			// senders (delivery's read consumer); the audit logs every
			// markRead all the same, one record each.
			require.Equal(t, receipts, auditedReads(t, "http://"+in.HTTPAddr, res.Practice))
			require.Equal(t, receipts, res.Stream.Count)
			require.Positive(t, res.ReceiptsPerS)
			require.NotNil(t, res.Server)
			require.Positive(t, res.Server.CommitsPerMessage, "receipts are durable commits")
			require.Positive(t, res.Server.CaughtUpAfterLastAckS, "the deployment's consumers and outboxes seen empty after the last ack")
			require.False(t, res.Failed())
		})
	}
}

// TestBenchRefusesBadFlags: every problem is reported at once.
func TestBenchRefusesBadFlags(t *testing.T) {
	var stderr bytes.Buffer
	err := bench.Main([]string{"--url", "ftp://x", "--senders", "0", "--messages", "0", "--text-bytes", "20000", "--mode", "both"}, &bytes.Buffer{}, &stderr)
	require.Error(t, err)
	for _, want := range []string{"--url", "--senders", "--messages", "--text-bytes", "--mode"} {
		require.Contains(t, err.Error(), want)
	}
	err = bench.Main([]string{"--mode", "read", "--senders", "8", "--messages", "4", "--prefill", "10"}, &bytes.Buffer{}, &stderr)
	require.Error(t, err)
	for _, want := range []string{"--messages must be at least --senders", "--prefill is for send mode"} {
		require.Contains(t, err.Error(), want)
	}
}

// startAllInOne starts a dev all-in-one whose limits are for load, not people.
func startAllInOne(t *testing.T) *allinone.Instance {
	t.Helper()
	cfg := allinone.Config{HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", DataDir: t.TempDir(), Dev: true,
		ArchiveAfter: 8760 * time.Hour, ArchiveSweepInterval: time.Hour, StepUpWindow: 5 * time.Minute, DrainTimeout: 5 * time.Second,
		Limits: ratelimit.Config{SendsPerSecond: 1e9, SendBurst: 1e9, UploadBytesPerMinute: ratelimit.DefaultUploadBytesPerMin}}
	in, err := allinone.Start(context.Background(), cfg, testkit.Logger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = in.Stop() })
	return in
}

// sseClients is the gateway's open /v1/events streams (its
// clinicchat_gateway_sse_clients gauge, summed).
func sseClients(t *testing.T, metricsURL string) int {
	t.Helper()
	resp, err := http.Get(metricsURL)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	n := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if name, rest, ok := strings.Cut(line, " "); ok && (name == "clinicchat_gateway_sse_clients" || strings.HasPrefix(name, "clinicchat_gateway_sse_clients{")) {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			require.NoError(t, err)
			n += v
		}
	}
	return int(n)
}

// TestBenchHoldsIdleStreamsOpen: --idle-streams opens that many streams of
// another practice's staff before the run and holds them through it (the
// gateway counts them while the sends go on), and closes them after.
func TestBenchHoldsIdleStreamsOpen(t *testing.T) {
	in := startAllInOne(t)
	metrics := "http://" + in.HTTPAddr + "/metrics"
	const senders, idle = 2, 12 // three users: 5, 5 and 2 streams
	during := -1
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := bench.Run(ctx, bench.Config{HTTPURL: "http://" + in.HTTPAddr, GRPCAddr: in.GRPCAddr, Senders: senders,
		Messages: 20, TextBytes: 64, Wait: time.Minute, IdleStreams: idle,
		Progress: func(sent, _ int) {
			if sent == 1 {
				during = sseClients(t, metrics)
			}
		}})
	require.NoError(t, err)
	var out bytes.Buffer
	res.WriteText(&out)
	require.Contains(t, out.String(), "idle streams  12 of another practice's staff")
	require.Equal(t, idle, res.IdleStreams)
	require.False(t, res.Failed())
	require.Zero(t, res.Lost)
	require.Equal(t, senders+idle, during, "the recipients' streams and the idle ones, open while the sends go on")
	require.Eventually(t, func() bool { return sseClients(t, metrics) == 0 }, 30*time.Second, 10*time.Millisecond,
		"every stream closed after the run")
}

// TestBenchIdleStreamRefusedSaysWhy: an idle stream the gateway refuses
// (here each identity may hold 3, and the bench opens 5 for each idle
// user) fails the run with the refusal's status and SPEC reason, and the
// streams it did open are closed.
func TestBenchIdleStreamRefusedSaysWhy(t *testing.T) {
	cfg := allinone.Config{HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", DataDir: t.TempDir(), Dev: true,
		ArchiveAfter: 8760 * time.Hour, ArchiveSweepInterval: time.Hour, StepUpWindow: 5 * time.Minute, DrainTimeout: 5 * time.Second,
		MaxStreamsPerIdentity: 3, MaxStreams: 100,
		Limits: ratelimit.Config{SendsPerSecond: 1e9, SendBurst: 1e9, UploadBytesPerMinute: ratelimit.DefaultUploadBytesPerMin}}
	in, err := allinone.Start(context.Background(), cfg, testkit.Logger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = in.Stop() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = bench.Run(ctx, bench.Config{HTTPURL: "http://" + in.HTTPAddr, GRPCAddr: in.GRPCAddr, Senders: 1,
		Messages: 2, TextBytes: 16, Wait: time.Minute, IdleStreams: 5})
	require.ErrorContains(t, err, "idle streams: open 4 of 5: HTTP 429 RESOURCE_EXHAUSTED")
	metrics := "http://" + in.HTTPAddr + "/metrics"
	require.Eventually(t, func() bool { return sseClients(t, metrics) == 0 }, 30*time.Second, 10*time.Millisecond,
		"the streams opened before the refusal are closed")
}
