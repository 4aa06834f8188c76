package natsx_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// An outbox row published just before the all-in-one stops (or crashes)
// and deleted only after it is published again at the next start: the
// embedded server forgets no event id of the window across its restart (it
// rebuilds them from the stored events), so the second publish is dropped
// as a duplicate and the stream holds the event once. This is what the
// all-in-one's duplicate window must cover: the relay's republishing at
// the next start (see duplicateWindow in cmd/clinicchat/allinone).
func TestEventIDsOutlastARestartOfTheEmbeddedServer(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := natsx.StreamsConfig{DuplicateWindow: 30 * time.Second}
	subject := natsx.Tenant(natsx.SubjectMessageCreated, "p", "patients/a")
	publish := func(js jetstream.JetStream, id string) *jetstream.PubAck {
		t.Helper()
		a, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: []byte(id)}, jetstream.WithMsgID(id))
		require.NoError(t, err)
		return a
	}
	open := func() (jetstream.JetStream, func()) {
		ns, nc, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: dir}, zap.NewNop())
		require.NoError(t, err)
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		require.NoError(t, natsx.EnsureStreams(ctx, js, cfg))
		return js, func() { nc.Close(); ns.Shutdown(); ns.WaitForShutdown() }
	}

	js, stop := open()
	first := publish(js, "01JDAAAAAAAAAAAAAAAAAAAAAA")
	require.False(t, first.Duplicate)
	require.True(t, publish(js, "01JDAAAAAAAAAAAAAAAAAAAAAA").Duplicate, "dropped while the server runs")
	stop()

	js, stop = open()
	defer stop()
	again := publish(js, "01JDAAAAAAAAAAAAAAAAAAAAAA")
	require.True(t, again.Duplicate, "dropped after the restart")
	require.Equal(t, first.Sequence, again.Sequence)
	next := publish(js, "01JDBBBBBBBBBBBBBBBBBBBBBB")
	require.False(t, next.Duplicate)
	require.Equal(t, first.Sequence+1, next.Sequence)
	s, err := js.Stream(ctx, natsx.StreamDelivery)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(2), info.State.Msgs, "each event stored once")
}
