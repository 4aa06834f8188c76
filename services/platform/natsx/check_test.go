package natsx_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	natstest "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// oldServer speaks just enough of the NATS protocol to announce version.
func oldServer(t *testing.T, version string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, `INFO {"server_id":"old","server_name":"old","version":%q,"proto":1,"go":"go1.20","host":"127.0.0.1","port":4222,"headers":true,"max_payload":1048576,"jetstream":true}`+"\r\n", version)
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if strings.HasPrefix(sc.Text(), "PING") {
						_, _ = c.Write([]byte("PONG\r\n"))
					}
				}
			}()
		}
	}()
	return "nats://" + lis.Addr().String()
}

func check(t *testing.T, url string) error {
	t.Helper()
	nc, err := natsx.Connect(natsx.Config{URL: url, Name: "check-test"})
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return natsx.CheckServer(ctx, nc, js)
}

func TestCheckServerNamesTheVersionFoundAndNeeded(t *testing.T) {
	err := check(t, oldServer(t, "2.9.25"))
	require.EqualError(t, err, "NATS server 2.9.25 is too old: clinicchat needs 2.10 or newer (multiple consumer filter subjects)")
}

func TestCheckServerWantsJetStream(t *testing.T) {
	opts := natstest.DefaultTestOptions
	opts.Port = -1
	ns := natstest.RunServer(&opts) // no JetStream
	t.Cleanup(ns.Shutdown)
	err := check(t, ns.ClientURL())
	require.ErrorContains(t, err, "has JetStream disabled: clinicchat needs JetStream")
}

func TestCheckServerAcceptsACurrentServer(t *testing.T) {
	opts := natstest.DefaultTestOptions
	opts.Port = -1
	opts.JetStream = true
	opts.StoreDir = t.TempDir()
	ns := natstest.RunServer(&opts)
	t.Cleanup(ns.Shutdown)
	require.NoError(t, check(t, ns.ClientURL()))
}
