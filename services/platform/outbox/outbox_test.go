package outbox_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natstest "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

const schema = `CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
	subject TEXT NOT NULL, payload BLOB NOT NULL, created_at BIGINT NOT NULL)`

const pgSchema = `CREATE TABLE outbox (seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE,
	subject TEXT NOT NULL, payload BYTEA NOT NULL, created_at BIGINT NOT NULL)`

func runNATS(port int, dir string) *server.Server {
	opts := natstest.DefaultTestOptions
	opts.Port = port
	opts.JetStream = true
	opts.StoreDir = dir
	return natstest.RunServer(&opts)
}

func add(t *testing.T, db *sqldb.DB, i int) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
		id := fmt.Sprintf("ev-%04d", i)
		return outbox.Add(ctx, tx, id, natsx.SubjectDeliveryAccess, &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p"}})
	}))
}

// With NATS down, writes still commit and their events wait in the outbox;
// when NATS returns, each event is published exactly once, in order.
func TestRelayPublishesEachEventOnceAcrossANATSOutage(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			dir := t.TempDir()
			ns := runNATS(-1, dir)
			port := ns.Addr().(*net.TCPAddr).Port
			addr := ns.ClientURL()
			nc, err := nats.Connect(addr, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
			require.NoError(t, err)
			defer nc.Close()
			js, err := jetstream.New(nc)
			require.NoError(t, err)
			require.NoError(t, natsx.EnsureStreams(ctx, js, natsx.StreamsConfig{}))

			db := testkit.OpenDB(t, b)
			ddl := schema
			if db.Dialect() == sqldb.Postgres {
				ddl = pgSchema
			}
			_, err = db.Exec(ctx, ddl)
			require.NoError(t, err)

			relay := outbox.NewRelay(db, js, testkit.Logger(t))
			relay.Poll = 20 * time.Millisecond
			done := make(chan error, 1)
			go func() { done <- relay.Run(ctx) }()

			for i := range 10 {
				add(t, db, i)
			}
			stream, err := js.Stream(ctx, natsx.StreamDelivery)
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				info, err := stream.Info(ctx)
				return err == nil && info.State.Msgs == 10
			}, 10*time.Second, 10*time.Millisecond)

			// NATS goes away; sends keep committing.
			ns.Shutdown()
			ns.WaitForShutdown()
			for i := 10; i < 60; i++ {
				add(t, db, i)
			}
			var pending int
			require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&pending))
			require.Positive(t, pending, "events wait in the outbox while NATS is down")

			// NATS returns on the same port and store.
			ns2 := runNATS(port, dir)
			defer ns2.Shutdown()

			require.Eventually(t, func() bool {
				var n int
				return db.QueryRow(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&n) == nil && n == 0
			}, 30*time.Second, 20*time.Millisecond)
			stream, err = js.Stream(ctx, natsx.StreamDelivery)
			require.NoError(t, err)
			info, err := stream.Info(ctx)
			require.NoError(t, err)
			require.EqualValues(t, 60, info.State.Msgs, "each event exactly once")

			cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
			require.NoError(t, err)
			batch, err := cons.FetchNoWait(100)
			require.NoError(t, err)
			seen := map[string]bool{}
			for m := range batch.Messages() {
				var e typev1.AccessRecorded
				require.NoError(t, proto.Unmarshal(m.Data(), &e))
				require.False(t, seen[e.GetMeta().GetId()], "duplicate %s", e.GetMeta().GetId())
				seen[e.GetMeta().GetId()] = true
			}
			require.Len(t, seen, 60)
			cancel()
			require.NoError(t, <-done)
		})
	}
}
