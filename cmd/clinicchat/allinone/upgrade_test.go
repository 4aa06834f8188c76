package allinone_test

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// legacyMessage is a patient's message.created as versions before tenant
// subjects published it (on the base subject alone).
func legacyMessage(conv string, seq int32, text string) (string, *deliveryv1.MessageCreated) {
	now := time.Now().UTC()
	name := conv + "/messages/" + strconv.Itoa(int(seq))
	return ids.New(), &deliveryv1.MessageCreated{
		Meta: &typev1.EventMeta{Id: ids.New(), Time: timestamppb.New(now), Practice: "demo", Actor: "patients/alice",
			ActorRole: "patient", Action: "message.send", Resource: name, Outcome: typev1.EventMeta_ALLOWED},
		Message: &deliveryv1.Message{Name: name, Seq: seq, Sender: "patients/alice", SenderRole: "patient",
			Text: text, Status: deliveryv1.Message_SENT, CreateTime: timestamppb.New(now)},
		Patient: "patients/alice",
	}
}

// A data dir written before tenant subjects: durable consumers filter the
// old exact subjects, the delivery stream holds an event on the old subject
// that they have not consumed yet, and delivery's outbox holds a row with
// the old subject that was never relayed. After the upgrade every one of
// them is consumed exactly once: by the conversation projection, by audit,
// and by a resuming event stream.
func TestUpgradeFromPreTenantSubjects(t *testing.T) {
	dir := t.TempDir()
	in := start(t, dir)
	h := harness{t: t, in: in}
	staff := h.as("dr-lee", "dentist")
	conv := staff.startConversation("alice")
	events := staff.events("")
	staff.send(conv.Name, "first", reqID("u", 1))
	cursor := events.next(t, "message.created").ID
	require.Eventually(t, func() bool {
		return staff.conversations("")[0].LastMessagePreview == "first"
	}, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, in.Stop())

	// Make it the old version's state, with the old version's leftovers.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, closeStreams := stoppedStreams(t, dir)
	for _, sc := range natsx.Streams(natsx.StreamsConfig{}) {
		str, err := js.Stream(ctx, sc.Name)
		require.NoError(t, err)
		for name := range str.ConsumerNames(ctx).Name() {
			c, err := js.Consumer(ctx, sc.Name, name)
			require.NoError(t, err)
			cfg := c.CachedInfo().Config
			var old []string
			for _, f := range cfg.FilterSubjects {
				if !strings.HasSuffix(f, ".>") || f == sc.Subjects[0] {
					old = append(old, f)
				}
			}
			cfg.FilterSubjects = old
			_, err = js.UpdateConsumer(ctx, sc.Name, cfg)
			require.NoError(t, err, "consumer %s", name)
		}
	}
	id2, m2 := legacyMessage(conv.Name, 2, "legacy event")
	raw, err := proto.Marshal(m2)
	require.NoError(t, err)
	_, err = js.Publish(ctx, natsx.SubjectMessageCreated, raw, jetstream.WithMsgID(id2))
	require.NoError(t, err)
	closeStreams()

	db, err := sqldb.Open(ctx, filepath.Join(dir, "delivery.db"))
	require.NoError(t, err)
	id3, m3 := legacyMessage(conv.Name, 3, "legacy outbox row")
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
		return outbox.Add(ctx, tx, id3, natsx.SubjectMessageCreated, m3)
	}))
	require.NoError(t, db.Close())

	// The upgrade.
	h = harness{t: t, in: start(t, dir)}
	staff = h.as("dr-lee", "dentist")
	require.Eventually(t, func() bool {
		c := staff.conversations("")[0]
		return c.LastMessagePreview == "legacy outbox row" && c.UnreadCount == 2
	}, 10*time.Second, 10*time.Millisecond, "the projection applied both, once each")

	// A stream resuming from before the upgrade gets both, once, in order.
	resumed := staff.events(cursor)
	require.Equal(t, m2.GetMessage().GetName(), eventMessage(t, resumed.next(t, "message.created")).Name)
	require.Equal(t, m3.GetMessage().GetName(), eventMessage(t, resumed.next(t, "message.created")).Name)

	admin := h.as("adam", "practice_admin")
	for _, m := range []*deliveryv1.MessageCreated{m2, m3} {
		require.Eventually(t, func() bool {
			return len(admin.auditEvents(`resource="`+m.GetMessage().GetName()+`" AND action="message.send"`)) > 0
		}, 10*time.Second, 10*time.Millisecond)
		require.Len(t, admin.auditEvents(`resource="`+m.GetMessage().GetName()+`" AND action="message.send"`), 1)
	}
	after := staff.send(conv.Name, "after", reqID("u", 2))
	next := eventMessage(t, resumed.next(t, "message.created"))
	require.Equal(t, after.Name, next.Name, "nothing twice, then live")
	require.Equal(t, "after", next.Text)
}

// stoppedStreams opens the embedded NATS of a stopped all-in-one's data dir
// on its own, for a test to put its streams and durables in an earlier
// version's state; closeStreams shuts it down again.
func stoppedStreams(t *testing.T, dir string) (js jetstream.JetStream, closeStreams func()) {
	t.Helper()
	ns, nc, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: filepath.Join(dir, "nats")}, testkit.Logger(t))
	require.NoError(t, err)
	js, err = jetstream.New(nc)
	require.NoError(t, err)
	return js, func() {
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	}
}
