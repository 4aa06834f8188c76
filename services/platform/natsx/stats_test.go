package natsx_test

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// The connection collector counts the messages and payload bytes that
// crossed the (here in-process) connection, in each direction.
func TestConnCollectorCountsTheConnectionsMessages(t *testing.T) {
	ns, nc, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: t.TempDir()}, zap.NewNop())
	require.NoError(t, err)
	defer ns.Shutdown()
	defer nc.Close()
	got := make(chan *nats.Msg, 4)
	_, err = nc.ChanSubscribe("t.echo", got)
	require.NoError(t, err)
	for range 3 {
		require.NoError(t, nc.Publish("t.echo", []byte("abcd")))
	}
	require.NoError(t, nc.Publish("t.nobody", []byte("ab")))
	for range 3 {
		<-got
	}

	reg := prometheus.NewRegistry()
	require.NoError(t, reg.Register(natsx.ConnCollector(nc)))
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP clinicchat_nats_connection_bytes_total Payload bytes that crossed the process's NATS connection (nats.Conn Stats), by direction as clinicchat_nats_connection_messages_total.
# TYPE clinicchat_nats_connection_bytes_total counter
clinicchat_nats_connection_bytes_total{direction="in"} 12
clinicchat_nats_connection_bytes_total{direction="out"} 14
# HELP clinicchat_nats_connection_messages_total Messages that crossed the process's NATS connection (nats.Conn Stats): direction in (delivered to the process: consumer deliveries, publish acknowledgements, API replies) or out (published by it: events, acks, pull requests, API requests).
# TYPE clinicchat_nats_connection_messages_total counter
clinicchat_nats_connection_messages_total{direction="in"} 3
clinicchat_nats_connection_messages_total{direction="out"} 4
`)))
}
