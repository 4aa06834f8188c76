package outbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// freePort returns a TCP port free at the time of the call.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// natsChildEnv names the environment variable that makes the test binary
// a NATS server (TestMain): "<name> <client port> <cluster port> <monitor port> <routes> <store dir>".
const natsChildEnv = "OUTBOX_TEST_NATS_SERVER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(natsChildEnv); spec != "" {
		runNATSChild(spec)
		return
	}
	os.Exit(m.Run())
}

// runNATSChild runs one server of the cluster until the process is killed.
func runNATSChild(spec string) {
	var name, routes, dir string
	var port, clusterPort, monitorPort int
	if _, err := fmt.Sscan(spec, &name, &port, &clusterPort, &monitorPort, &routes, &dir); err != nil {
		fmt.Fprintln(os.Stderr, "bad", natsChildEnv, err)
		os.Exit(2)
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: name, Host: "127.0.0.1", Port: port,
		JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true, HTTPHost: "127.0.0.1", HTTPPort: monitorPort,
		Cluster: server.ClusterOpts{Name: "c", Host: "127.0.0.1", Port: clusterPort},
		Routes:  server.RoutesFromStr(routes),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ns.Start()
	ns.WaitForShutdown()
}

// natsProc is one server of the cluster: a child process, so that it can
// be SIGKILLed as a crashed host would be (an embedded server's Shutdown
// hands its leaderships over first).
type natsProc struct {
	name    string
	url     string
	monitor string // its monitoring endpoint, http://host:port
	cmd     *exec.Cmd
}

// runCluster starts three NATS servers in one JetStream cluster, each in a
// process of its own (this test binary, see TestMain).
func runCluster(t *testing.T) []*natsProc {
	t.Helper()
	var clusterPorts [3]int
	var routes []string
	for i := range clusterPorts {
		clusterPorts[i] = freePort(t)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", clusterPorts[i]))
	}
	procs := make([]*natsProc, len(clusterPorts))
	for i := range clusterPorts {
		name, port, monitorPort := fmt.Sprintf("n%d", i+1), freePort(t), freePort(t)
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d %d %s %s", natsChildEnv, name, port, clusterPorts[i], monitorPort,
			strings.Join(routes, ","), t.TempDir()))
		cmd.Stderr = os.Stderr
		require.NoError(t, cmd.Start())
		p := &natsProc{name: name, url: fmt.Sprintf("nats://127.0.0.1:%d", port),
			monitor: fmt.Sprintf("http://127.0.0.1:%d", monitorPort), cmd: cmd}
		t.Cleanup(p.kill)
		procs[i] = p
	}
	return procs
}

// waitClusterReady waits until the cluster can take replicated streams:
// every server answers /healthz (JetStream enabled, in contact and current
// with the metadata leader), and every server names the same metadata
// leader, counts a cluster of all of them, and sees the other servers as
// current members. A stream declared before that fails or times out (a
// cluster still electing drops JetStream API requests), and declaring it
// again while the first try is still being applied fails too.
func waitClusterReady(t *testing.T, servers []*natsProc) {
	t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second}
	get := func(url string, out any) (int, error) {
		resp, err := hc.Get(url)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if out == nil {
			return resp.StatusCode, nil
		}
		return resp.StatusCode, json.NewDecoder(resp.Body).Decode(out)
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		leader := ""
		jszOf := map[string]*server.JSInfo{}
		for _, p := range servers {
			code, err := get(p.monitor+"/healthz", nil)
			if !assert.NoError(c, err) || !assert.Equal(c, http.StatusOK, code, "%s /healthz", p.name) {
				return
			}
			var jsz server.JSInfo
			if _, err := get(p.monitor+"/jsz", &jsz); !assert.NoError(c, err) {
				return
			}
			m := jsz.Meta
			if !assert.NotNil(c, m, "%s: no metadata cluster", p.name) || !assert.NotEmpty(c, m.Leader, "%s: no metadata leader", p.name) ||
				!assert.Equal(c, len(servers), m.Size, "%s: metadata cluster size", p.name) {
				return
			}
			if leader != "" && !assert.Equal(c, leader, m.Leader, "%s: metadata leader", p.name) {
				return
			}
			leader, jszOf[p.name] = m.Leader, &jsz
		}
		// The leader knows every other server as a current member that is
		// online with JetStream (where it places a stream's replicas).
		m := jszOf[leader]
		if !assert.NotNil(c, m, "the metadata leader %q is none of the servers", leader) {
			return
		}
		current := 0
		for _, r := range m.Meta.Replicas {
			if r.Current && !r.Offline {
				current++
			}
		}
		assert.Equal(c, len(servers)-1, current, "other servers current with the leader %s: %+v", leader, m.Meta.Replicas)
	}, 2*time.Minute, 50*time.Millisecond, "JetStream cluster ready")
}

// kill SIGKILLs the server and waits for it to end.
func (p *natsProc) kill() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
}

// The server leading the stream goes away while the relay is publishing a
// pipelined batch (publishes around the election fail, later ones succeed
// once another server leads): each conversation's events are still on the
// stream exactly once and in the order they were written.
func TestRelayKeepsOrderPerSubjectWhenTheStreamLeaderDies(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-server NATS cluster")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	servers := runCluster(t)
	var urls []string
	for _, p := range servers {
		urls = append(urls, p.url)
	}
	nc, err := nats.Connect(strings.Join(urls, ","), nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	waitClusterReady(t, servers)
	// Ready, the declaration succeeds at the first try unless the machine
	// is so loaded that an R3 stream's election outlasts the wait: each
	// try waits long, and a failed one is retried (a declaration is
	// idempotent).
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
		defer ccancel()
		assert.NoError(c, natsx.EnsureStreams(cctx, js, natsx.StreamsConfig{Replicas: 3}))
	}, 3*time.Minute, 200*time.Millisecond, "streams declared on the cluster")

	db := testkit.OpenDB(t, testkit.Backends()[0])
	_, err = db.Exec(ctx, schema)
	require.NoError(t, err)

	const convs, per = 8, 400
	subject := func(c int) string { return natsx.Tenant(natsx.SubjectDeliveryAccess, "p", fmt.Sprintf("c%d", c)) }
	// Every event is in the outbox before the relay starts: its batches
	// are full, so the leader dies with many publishes in flight.
	for i := range per {
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
			for c := range convs {
				id := fmt.Sprintf("ev-c%d-%04d", c, i)
				if err := outbox.Add(ctx, tx, id, subject(c),
					&typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Practice: "p", Resource: fmt.Sprintf("c%d", c), Detail: fmt.Sprint(i)}}); err != nil {
					return err
				}
			}
			return nil
		}))
	}

	stream, err := js.Stream(ctx, natsx.StreamDelivery)
	require.NoError(t, err)
	var info *jetstream.StreamInfo
	relay := outbox.NewRelay(db, js, testkit.Logger(t))
	relay.Poll = 20 * time.Millisecond
	relay.AckWait = 2 * time.Second
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()

	// Move the stream's leadership a few times while the relay publishes
	// its backlog (a publish that reaches no leader fails; the next may
	// reach the new one), then SIGKILL the leader: what the rig does.
	progress := func(atLeast uint64) {
		t.Helper()
		require.Eventually(t, func() bool {
			info, err := stream.Info(ctx)
			return err == nil && info.Cluster.Leader != "" && info.State.Msgs >= atLeast
		}, 60*time.Second, 5*time.Millisecond)
	}
	for i := range 6 {
		progress(uint64(200 * (i + 1)))
		_, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+natsx.StreamDelivery, nil, 5*time.Second)
		require.NoError(t, err)
	}
	progress(1400)
	info, err = stream.Info(ctx)
	require.NoError(t, err)
	for _, p := range servers {
		if p.name == info.Cluster.Leader {
			p.kill()
		}
	}

	events := make([]*typev1.AccessRecorded, 0, convs*per)
	require.Eventually(t, func() bool {
		info, err := stream.Info(ctx)
		return err == nil && info.State.Msgs >= convs*per
	}, 60*time.Second, 50*time.Millisecond, "every event reaches the stream")
	var cons jetstream.Consumer
	require.Eventually(t, func() bool { // the cluster may still be settling
		cons, err = stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		return err == nil
	}, 60*time.Second, 100*time.Millisecond, "a consumer of the stream")
	// A fetch may fail while the cluster settles ("no responders" while
	// the consumer's leader moves, CI Dec 2): the ordered consumer goes on
	// after the last message it delivered, so fetch again.
	var undecodable error
	require.Eventually(t, func() bool {
		batch, err := cons.Fetch(convs*per-len(events), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return false
		}
		for m := range batch.Messages() {
			var e typev1.AccessRecorded
			if err := proto.Unmarshal(m.Data(), &e); err != nil {
				undecodable = err
				return true
			}
			events = append(events, &e)
		}
		return len(events) >= convs*per
	}, 60*time.Second, 100*time.Millisecond, "every event fetched")
	require.NoError(t, undecodable)
	// An event is out of order when its conversation already had a later one.
	last := map[string]int{}
	outOfOrder := 0
	for _, e := range events {
		conv := e.GetMeta().GetResource()
		i, err := strconv.Atoi(e.GetMeta().GetDetail())
		require.NoError(t, err)
		if l, ok := last[conv]; ok && i < l {
			if outOfOrder++; outOfOrder <= 5 {
				t.Logf("%s: event %d after %d", conv, i, l)
			}
			continue
		}
		last[conv] = i
	}
	require.Zero(t, outOfOrder, "events out of order (of %d)", len(events))
	require.Eventually(t, func() bool { // a request may time out while the cluster settles (CI, Dec 1)
		info, err = stream.Info(ctx)
		return err == nil
	}, 60*time.Second, 100*time.Millisecond, "the stream's state")
	require.EqualValues(t, convs*per, info.State.Msgs, "each event exactly once")
	published, waits := relay.Stats()
	t.Logf("%d events acknowledged in %d waits for acknowledgements, %d PubAcks", published, waits, relay.Acks())
	// The R3 stream took the relay's rows in fast batches across the
	// leadership moves (nats-server 2.14+; one PubAck per batch).
	require.Less(t, relay.Acks(), published, "PubAcks: rows went in fast batches")
	cancel()
	require.NoError(t, <-done)
}
