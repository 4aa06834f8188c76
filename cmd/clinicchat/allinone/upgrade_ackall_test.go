package allinone_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// A data dir of an earlier version, in each of its two forms: before
// AckAll durables (explicit), each ConsumeBatch durable is explicitly
// acked under its own name; before memory durables (ackall: today's main
// up to cons22), it is a file-stored AckAll durable; either way at its ack
// floor, with an event it has not consumed yet, and no position in the
// services' databases. After the upgrade each is an AckAll durable in the
// server's memory from that floor, its position in its service's database:
// the event is projected and audited once, what was consumed before is not
// again, and the old durables and their state files are gone.
func TestUpgradeToAckAllDurables(t *testing.T) {
	for _, old := range []string{"explicit", "ackall"} {
		t.Run(old, func(t *testing.T) { testUpgradeToMemoryDurables(t, old == "explicit") })
	}
}

// positionDBs are the all-in-one's databases that hold durables' positions.
var positionDBs = []string{"conversation.db", "delivery.db", "audit.db"}

func testUpgradeToMemoryDurables(t *testing.T, explicit bool) {
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

	// The memory durables, as they are when the instance stops.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type durable struct {
		stream   string
		cfg      jetstream.ConsumerConfig
		ackFloor uint64
	}
	var durables []durable
	{
		inc, err := nats.Connect("", nats.InProcessServer(allinone.EmbeddedNATS(in)))
		require.NoError(t, err)
		ijs, err := jetstream.New(inc)
		require.NoError(t, err)
		// The floors once every durable has taken and acknowledged what
		// start's set-up published: read while one still consumed, a floor
		// was behind the position the stop then recorded (a CI run).
		require.Eventually(t, func() bool {
			durables = durables[:0]
			for _, sc := range natsx.Streams(natsx.StreamsConfig{}) {
				str, err := ijs.Stream(ctx, sc.Name)
				require.NoError(t, err)
				for info := range str.ListConsumers(ctx).Info() {
					if strings.HasSuffix(info.Config.Durable, natsx.AckAllSuffix) {
						require.True(t, info.Config.MemoryStorage, info.Config.Durable)
						if info.NumPending > 0 || info.NumAckPending > 0 {
							return false
						}
						durables = append(durables, durable{sc.Name, info.Config, info.AckFloor.Stream})
					}
				}
			}
			return true
		}, 30*time.Second, 10*time.Millisecond, "every durable caught up")
		inc.Close()
	}
	require.NoError(t, in.Stop())
	// A clean stop recorded each one's position; the earlier version had
	// none of them (its database had no such table).
	positions := map[string]uint64{}
	for _, name := range positionDBs {
		db, err := sqldb.Open(ctx, filepath.Join(dir, name))
		require.NoError(t, err)
		rows, err := db.Query(ctx, `SELECT durable, stream_seq FROM consumer_positions`)
		require.NoError(t, err)
		for rows.Next() {
			var d string
			var s int64
			require.NoError(t, rows.Scan(&d, &s))
			positions[d] = uint64(s)
		}
		require.NoError(t, rows.Err())
		_, err = db.Exec(ctx, `DELETE FROM consumer_positions`)
		require.NoError(t, err)
		require.NoError(t, db.Close())
	}

	// Make it the old version's state: file-stored durables, same position.
	js, closeStreams := stoppedStreams(t, dir)
	replaced := map[string]bool{}
	for _, d := range durables {
		name := strings.TrimSuffix(d.cfg.Durable, natsx.AckAllSuffix)
		pos := positions[name] // none: it has handled nothing
		require.Equal(t, d.ackFloor, pos, "%s's position recorded at the stop", name)
		cfg := d.cfg
		cfg.Name, cfg.MemoryStorage = "", false
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverAllPolicy, 0
		if explicit {
			cfg.Durable, cfg.AckPolicy = name, jetstream.AckExplicitPolicy
		}
		_, err := js.CreateConsumer(ctx, d.stream, cfg)
		require.NoError(t, err)
		if pos > 0 {
			_, err = js.ResetConsumerToSequence(ctx, d.stream, cfg.Durable, pos+1)
			require.NoError(t, err)
		}
		replaced[d.stream+"/"+name] = true
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
		require.True(t, c.CachedInfo().Config.MemoryStorage, d)
	}
	// No consumer state file left but the two plain durables' (Consume).
	files, err := filepath.Glob(filepath.Join(dir, "nats", "jetstream", "*", "streams", "*", "obs", "*"))
	require.NoError(t, err)
	for _, f := range files {
		require.NotContains(t, f, natsx.AckAllSuffix)
		for d := range replaced {
			_, old, _ := strings.Cut(d, "/")
			require.NotEqual(t, old, filepath.Base(f))
		}
	}
}
