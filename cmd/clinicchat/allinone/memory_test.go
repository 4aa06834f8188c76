package allinone_test

import (
	"context"
	"flag"
	"math"
	"path/filepath"
	"runtime/debug"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// openNATSStore serves the NATS store of a stopped instance's data dir
// dir on an embedded server of its own, until stop.
func openNATSStore(t *testing.T, dir string) (js jetstream.JetStream, stop func()) {
	t.Helper()
	ns, nc, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: filepath.Join(dir, "nats")}, testkit.Logger(t))
	require.NoError(t, err)
	stop = func() {
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	}
	if js, err = jetstream.New(nc); err != nil {
		stop()
		require.NoError(t, err)
	}
	return js, stop
}

// streamWindows opens dir's NATS store (the all-in-one stopped) and returns
// each stream's duplicate window.
func streamWindows(t *testing.T, dir string, ensure *natsx.StreamsConfig) map[string]time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, closeStore := openNATSStore(t, dir)
	defer closeStore()
	if ensure != nil {
		require.NoError(t, natsx.EnsureStreams(ctx, js, *ensure))
	}
	out := map[string]time.Duration{}
	for _, sc := range natsx.Streams(natsx.StreamsConfig{}) {
		str, err := js.Stream(ctx, sc.Name)
		require.NoError(t, err)
		out[sc.Name] = str.CachedInfo().Config.Duplicates
	}
	return out
}

// The all-in-one's streams remember published event ids for 10 s, not the
// distributed default of 2 minutes (the server holds every id of the window
// in memory), and a data dir made with the 2-minute window is reconciled.
func TestAllInOneDuplicateWindow(t *testing.T) {
	dir := t.TempDir()
	for name, w := range streamWindows(t, dir, &natsx.StreamsConfig{}) {
		require.Equal(t, natsx.DefaultDuplicateWindow, w, "the earlier version's data dir: %s", name)
	}
	in := start(t, dir)
	require.NoError(t, in.Stop())
	windows := streamWindows(t, dir, nil)
	require.Len(t, windows, natsx.StreamCount())
	for name, w := range windows {
		require.Equal(t, 10*time.Second, w, name)
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1048576": 1 << 20, "512B": 512, "64KiB": 64 << 10, "96MiB": 96 << 20, " 2GiB ": 2 << 30} {
		got, err := allinone.ParseBytes(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "MiB", "-1MiB", "1.5GiB", "96MB", "96 MiB", "9223372036854775807GiB"} {
		_, err := allinone.ParseBytes(bad)
		require.Error(t, err, bad)
	}
}

// --memory-limit sets the Go runtime's soft limit; without it the limit is
// left as it was (GOMEMLIMIT, or none).
func TestMemoryLimitFlag(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })

	fs := flag.NewFlagSet("clinicchat", flag.ContinueOnError)
	var cfg allinone.Config
	cfg.Flags(fs)
	require.Error(t, fs.Parse([]string{"--memory-limit", "lots"}))
	require.NoError(t, fs.Parse([]string{"--memory-limit", "200MiB"}))
	require.Equal(t, int64(200<<20), cfg.MemoryLimit)

	in := startWith(t, t.TempDir(), func(c *allinone.Config) { c.MemoryLimit = cfg.MemoryLimit })
	// The target, and 3 bytes per byte of goroutine stacks (a few MiB here).
	limit := debug.SetMemoryLimit(-1)
	require.GreaterOrEqual(t, limit, int64(200<<20))
	require.Less(t, limit, int64(240<<20))
	require.NoError(t, in.Stop())

	debug.SetMemoryLimit(prev)
	in = start(t, t.TempDir())
	require.Equal(t, prev, debug.SetMemoryLimit(-1), "no flag: unchanged")
	require.NoError(t, in.Stop())
}

// streamsOf returns each stream's stored configuration and event count.
func streamsOf(ctx context.Context, t *testing.T, js jetstream.JetStream) map[string]*jetstream.StreamInfo {
	t.Helper()
	out := map[string]*jetstream.StreamInfo{}
	for _, sc := range natsx.Streams(natsx.StreamsConfig{}) {
		s, err := js.Stream(ctx, sc.Name)
		require.NoError(t, err)
		out[sc.Name] = s.CachedInfo()
	}
	return out
}

// A clean stop stores the streams as natsx.PrepareStreamsForRestart has
// them (no MaxBytes, a per-subject limit never reached: nats-server opens
// them with 4 MiB blocks), every event kept; the next start stores the
// declared limits again before it serves, and the events are still there.
func TestStopPreparesTheStreamsForSmallBlocks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	in := start(t, dir)
	staff := harness{t: t, in: in}.as("dr-lee", "dentist")
	conv := staff.startConversation("alice")
	staff.send(conv.Name, "before the restart", reqID("u", 1))
	require.Eventually(t, func() bool { // the event is in the delivery stream
		return staff.conversations("")[0].LastMessagePreview == "before the restart"
	}, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, in.Stop())

	js, closeStore := openNATSStore(t, dir)
	stopped := streamsOf(ctx, t, js)
	closeStore()
	for name, si := range stopped {
		require.Equal(t, int64(-1), si.Config.MaxBytes, name)
		require.Equal(t, int64(math.MaxInt64), si.Config.MaxMsgsPerSubject, name)
		require.Equal(t, natsx.DefaultRetention, si.Config.MaxAge, name)
		require.Equal(t, 10*time.Second, si.Config.Duplicates, name)
	}
	require.NotZero(t, stopped[natsx.StreamDelivery].State.Msgs)

	in = start(t, dir)
	nc, err := nats.Connect("", nats.InProcessServer(allinone.EmbeddedNATS(in)))
	require.NoError(t, err)
	defer nc.Close()
	js, err = jetstream.New(nc)
	require.NoError(t, err)
	for name, si := range streamsOf(ctx, t, js) {
		require.Equal(t, natsx.DefaultStreamMaxBytes, si.Config.MaxBytes, name)
		require.Equal(t, int64(-1), si.Config.MaxMsgsPerSubject, name)
		require.GreaterOrEqual(t, si.State.Msgs, stopped[name].State.Msgs, name)
	}
}
