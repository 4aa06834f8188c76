package natsx_test

import (
	"context"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// embeddedStore serves the JetStream store in dir until stop.
func embeddedStore(t *testing.T, dir string) (js jetstream.JetStream, stop func()) {
	t.Helper()
	ns, nc, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: dir}, zap.NewNop())
	require.NoError(t, err)
	stop = func() {
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	}
	t.Cleanup(stop)
	js, err = jetstream.New(nc)
	require.NoError(t, err)
	return js, stop
}

// deliveryBlocks publishes 5 MiB of events into the delivery stream and
// returns how many block files the stream has then: 1 with 8 MiB blocks,
// 2 with 4 MiB ones.
func deliveryBlocks(ctx context.Context, t *testing.T, js jetstream.JetStream, dir string) int {
	t.Helper()
	payload := make([]byte, 64<<10)
	for i := 0; i < 80; i++ {
		_, err := js.Publish(ctx, natsx.Tenant(natsx.SubjectMessageCreated, "p", "patients/a"), payload)
		require.NoError(t, err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "jetstream", "*", "streams", natsx.StreamDelivery, "msgs", "*.blk"))
	require.NoError(t, err)
	return len(files)
}

// requireDeclared checks that every stream has its declared limits.
func requireDeclared(ctx context.Context, t *testing.T, js jetstream.JetStream, cfg natsx.StreamsConfig) {
	t.Helper()
	for _, sc := range natsx.Streams(cfg) {
		s, err := js.Stream(ctx, sc.Name)
		require.NoError(t, err)
		got := s.CachedInfo().Config
		require.Equal(t, sc.MaxBytes, got.MaxBytes, sc.Name)
		require.Equal(t, int64(-1), got.MaxMsgsPerSubject, sc.Name)
		require.Equal(t, sc.MaxAge, got.MaxAge, sc.Name)
		require.Equal(t, sc.Duplicates, got.Duplicates, sc.Name)
	}
}

// With SmallBlocks, EnsureStreams creates a new stream with 4 MiB blocks
// (8 MiB without: its MaxBytes) and the declared limits stored before it
// returns.
func TestEnsureStreamsSmallBlocksCreatesStreamsWith4MiBBlocks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for small, want := range map[bool]int{false: 1, true: 2} {
		dir := t.TempDir()
		js, _ := embeddedStore(t, dir)
		cfg := natsx.StreamsConfig{SmallBlocks: small}
		require.NoError(t, natsx.EnsureStreams(ctx, js, cfg))
		requireDeclared(ctx, t, js, cfg)
		require.Equal(t, want, deliveryBlocks(ctx, t, js, dir), "SmallBlocks %v", small)
		require.NoError(t, natsx.EnsureStreams(ctx, js, cfg), "again, the streams existing")
		requireDeclared(ctx, t, js, cfg)
	}
}

// A store prepared at a clean stop keeps its events and drops nothing
// (no MaxBytes, a per-subject limit never reached); the next start opens
// its streams with 4 MiB blocks, and EnsureStreams stores the declared
// limits again. Without the step the streams made with 8 MiB blocks keep
// them.
func TestPrepareStreamsForRestartOpensThemWith4MiBBlocks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for prepare, want := range map[bool]int{false: 1, true: 2} {
		dir := t.TempDir()
		cfg := natsx.StreamsConfig{DuplicateWindow: 10 * time.Second}
		js, stop := embeddedStore(t, dir) // an 8 MiB-block store, as made before SmallBlocks
		require.NoError(t, natsx.EnsureStreams(ctx, js, cfg))
		before := natsx.Tenant(natsx.SubjectMessageCreated, "p", "patients/before")
		_, err := js.Publish(ctx, before, []byte("before the restart"))
		require.NoError(t, err)
		if prepare {
			require.NoError(t, natsx.PrepareStreamsForRestart(ctx, js, cfg))
		}
		stop()

		js, _ = embeddedStore(t, dir)
		if prepare {
			for _, sc := range natsx.Streams(cfg) {
				s, err := js.Stream(ctx, sc.Name)
				require.NoError(t, err)
				got := s.CachedInfo().Config
				require.Equal(t, int64(-1), got.MaxBytes, sc.Name)
				require.Equal(t, int64(math.MaxInt64), got.MaxMsgsPerSubject, sc.Name)
				require.Equal(t, sc.MaxAge, got.MaxAge, sc.Name)
				require.Equal(t, sc.Duplicates, got.Duplicates, sc.Name)
			}
		}
		cfg.SmallBlocks = true
		require.NoError(t, natsx.EnsureStreams(ctx, js, cfg))
		requireDeclared(ctx, t, js, cfg)
		str, err := js.Stream(ctx, natsx.StreamDelivery)
		require.NoError(t, err)
		m, err := str.GetLastMsgForSubject(ctx, before)
		require.NoError(t, err)
		require.Equal(t, "before the restart", string(m.Data))
		require.Equal(t, want, deliveryBlocks(ctx, t, js, dir), "prepared %v", prepare)
	}
}
