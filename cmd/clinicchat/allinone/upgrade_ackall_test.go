package allinone_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// A data dir of the versions before AckAll durables: each ConsumeBatch
// durable is explicitly acked under its own name, at its ack floor, with an
// event it has not consumed yet. After the upgrade each is replaced by its
// AckAll durable from that floor: the event is projected and audited once,
// what was consumed before is not again, and the old durables are gone.
func TestUpgradeToAckAllDurables(t *testing.T) {
	dir := t.TempDir()
	in := start(t, dir)
	h := harness{t: t, in: in}
	staff := h.as("dr-lee", "dentist")
	conv := staff.startConversation("alice")
	other := staff.startConversation("emma")
	first := staff.send(conv.Name, "first", reqID("u", 1))
	admin := h.as("adam", "practice_admin")
	require.Eventually(t, func() bool {
		return staff.conversations("")[0].LastMessagePreview == "first" &&
			len(admin.auditEvents(`resource="`+first.Name+`" AND action="message.send"`)) == 1
	}, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, in.Stop())

	// Make it the old version's state: explicit durables, same position.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, closeStreams := stoppedStreams(t, dir)
	replaced := map[string]bool{}
	for _, sc := range natsx.Streams(natsx.StreamsConfig{}) {
		str, err := js.Stream(ctx, sc.Name)
		require.NoError(t, err)
		for name := range str.ConsumerNames(ctx).Name() {
			old, ok := strings.CutSuffix(name, natsx.AckAllSuffix)
			if !ok {
				continue
			}
			c, err := js.Consumer(ctx, sc.Name, name)
			require.NoError(t, err)
			ci := c.CachedInfo()
			require.NoError(t, js.DeleteConsumer(ctx, sc.Name, name))
			cfg := ci.Config
			cfg.Durable, cfg.Name, cfg.AckPolicy = old, "", jetstream.AckExplicitPolicy
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverAllPolicy, 0
			_, err = js.CreateConsumer(ctx, sc.Name, cfg)
			require.NoError(t, err)
			if ci.AckFloor.Stream > 0 {
				_, err = js.ResetConsumerToSequence(ctx, sc.Name, old, ci.AckFloor.Stream+1)
				require.NoError(t, err)
			}
			replaced[sc.Name+"/"+old] = true
		}
	}
	for _, d := range []string{natsx.StreamDelivery + "/conversation-projection", natsx.StreamDelivery + "/audit-delivery",
		natsx.StreamConversation + "/delivery-receipts", natsx.StreamConversation + "/audit-conversation"} {
		require.True(t, replaced[d], "%s: %v", d, replaced)
	}
	// An event the old durables have not consumed.
	id2, m2 := legacyMessage(conv.Name, 2, "while down")
	raw, err := proto.Marshal(m2)
	require.NoError(t, err)
	_, err = js.Publish(ctx, natsx.CreatedSubject(natsx.Tenant(natsx.SubjectMessageCreated, "demo", "patients/alice"), false),
		raw, jetstream.WithMsgID(id2))
	require.NoError(t, err)
	closeStreams()

	// The upgrade.
	in = start(t, dir)
	h = harness{t: t, in: in}
	staff, admin = h.as("dr-lee", "dentist"), h.as("adam", "practice_admin")
	require.Eventually(t, func() bool {
		c := staff.conversations("")[0]
		return c.Name == conv.Name && c.LastMessagePreview == "while down" && c.UnreadCount == 1
	}, 10*time.Second, 10*time.Millisecond, "the projection applied it, once")
	name := m2.GetMessage().GetName()
	require.Eventually(t, func() bool {
		return len(admin.auditEvents(`resource="`+name+`" AND action="message.send"`)) > 0
	}, 10*time.Second, 10*time.Millisecond)
	// Live after the upgrade (another thread: the event above was
	// numbered outside delivery's database).
	after := staff.send(other.Name, "after", reqID("u", 2))
	require.Eventually(t, func() bool {
		return staff.conversations("")[0].LastMessagePreview == "after" &&
			len(admin.auditEvents(`resource="`+after.Name+`" AND action="message.send"`)) == 1
	}, 10*time.Second, 10*time.Millisecond)
	require.Len(t, admin.auditEvents(`resource="`+name+`" AND action="message.send"`), 1)
	require.Len(t, admin.auditEvents(`resource="`+first.Name+`" AND action="message.send"`), 1)

	inc, err := nats.Connect("", nats.InProcessServer(allinone.EmbeddedNATS(in)))
	require.NoError(t, err)
	defer inc.Close()
	ijs, err := jetstream.New(inc)
	require.NoError(t, err)
	for d := range replaced {
		stream, old, _ := strings.Cut(d, "/")
		_, err := ijs.Consumer(ctx, stream, old)
		require.ErrorIs(t, err, jetstream.ErrConsumerNotFound, "%s is gone", d)
		c, err := ijs.Consumer(ctx, stream, old+natsx.AckAllSuffix)
		require.NoError(t, err)
		require.Equal(t, jetstream.AckAllPolicy, c.CachedInfo().Config.AckPolicy)
	}
}
