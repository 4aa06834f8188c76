package natsx_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// A stream created by an older version — here with a narrower subject list
// and events on the echoed subjects — is updated at start to the declared
// subjects: its events stay, and the echo kinds (new) are accepted and read
// by a consumer of both the old and the new subjects in stream order.
func TestEnsureStreamsUpdatesAnExistingStreamsSubjects(t *testing.T) {
	ns, nc, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: t.TempDir()}, zap.NewNop())
	require.NoError(t, err)
	defer ns.Shutdown()
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	old := natsx.Streams(natsx.StreamsConfig{})
	for i := range old {
		if old[i].Name == natsx.StreamDelivery {
			old[i].Subjects = natsx.Filter(natsx.SubjectMessageCreated, natsx.SubjectMessageUpdated)
		}
		_, err := js.CreateStream(ctx, old[i])
		require.NoError(t, err)
	}
	updated := natsx.Tenant(natsx.SubjectMessageUpdated, "p", "patients/a")
	_, err = js.Publish(ctx, updated, []byte("old"))
	require.NoError(t, err)
	echo := natsx.Tenant(natsx.SubjectMessageStatusEcho, "p", "patients/a")
	_, err = js.Publish(ctx, echo, []byte("refused"))
	require.Error(t, err, "the older stream does not hold the echo kind")

	require.NoError(t, natsx.EnsureStreams(ctx, js, natsx.StreamsConfig{}))
	s, err := js.Stream(ctx, natsx.StreamDelivery)
	require.NoError(t, err)
	require.Equal(t, natsx.Streams(natsx.StreamsConfig{})[1].Subjects, s.CachedInfo().Config.Subjects)
	_, err = js.Publish(ctx, echo, []byte("new"))
	require.NoError(t, err)
	_, err = js.Publish(ctx, natsx.Tenant(natsx.SubjectMessageCreated, "p", "patients/a"), []byte("other"))
	require.NoError(t, err)

	cons, err := js.CreateConsumer(ctx, natsx.StreamDelivery, jetstream.ConsumerConfig{
		FilterSubjects: natsx.Filter(natsx.SubjectMessageUpdated, natsx.SubjectMessageStatusEcho),
		AckPolicy:      jetstream.AckNonePolicy,
	})
	require.NoError(t, err)
	batch, err := cons.FetchNoWait(10)
	require.NoError(t, err)
	var got []string
	for m := range batch.Messages() {
		got = append(got, m.Subject()+" "+string(m.Data()))
	}
	require.Equal(t, []string{updated + " old", echo + " new"}, got)
}
