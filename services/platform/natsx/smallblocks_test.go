package natsx_test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// A store whose streams were prepared for the restart (the all-in-one's
// clean stop) opens with 4 MiB blocks: after EnsureStreams restores the
// declared limits, 5 MiB of events make two block files where a store
// without the step makes one. The events of before the restart are kept,
// and the streams' stored config is the declared one again.
func TestPrepareStreamsForRestartGivesSmallerBlocks(t *testing.T) {
	for _, prepare := range []bool{false, true} {
		dir := t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		subject := natsx.Tenant(natsx.SubjectMessageCreated, "p", "patients/a")
		start := func() (jetstream.JetStream, func()) {
			ns, nc, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: dir}, zap.NewNop())
			require.NoError(t, err)
			js, err := jetstream.New(nc)
			require.NoError(t, err)
			require.NoError(t, natsx.EnsureStreams(ctx, js, natsx.StreamsConfig{}))
			return js, func() { nc.Close(); ns.Shutdown(); ns.WaitForShutdown() }
		}

		js, stop := start()
		_, err := js.Publish(ctx, subject, []byte("before the restart"))
		require.NoError(t, err)
		if prepare {
			require.NoError(t, natsx.PrepareStreamsForRestart(ctx, js, natsx.StreamsConfig{}))
		}
		stop()

		js, stop = start()
		s, err := js.Stream(ctx, natsx.StreamDelivery)
		require.NoError(t, err)
		declared := natsx.Streams(natsx.StreamsConfig{})[1]
		require.Equal(t, declared.MaxBytes, s.CachedInfo().Config.MaxBytes)
		require.Zero(t, declared.MaxMsgsPerSubject)
		require.Equal(t, int64(-1), s.CachedInfo().Config.MaxMsgsPerSubject, "no per-subject limit")
		first, err := s.GetMsg(ctx, 1)
		require.NoError(t, err)
		require.Equal(t, "before the restart", string(first.Data))
		payload := bytes.Repeat([]byte("x"), 1024)
		for range 5 * 1024 {
			_, err := js.Publish(ctx, subject, payload)
			require.NoError(t, err)
		}
		stop()
		cancel()

		blks, err := filepath.Glob(filepath.Join(dir, "jetstream", "*", "streams", natsx.StreamDelivery, "msgs", "*.blk"))
		require.NoError(t, err)
		want := 1
		if prepare {
			want = 2
		}
		require.Len(t, blks, want, "prepared for the restart: %v", prepare)
	}
}
