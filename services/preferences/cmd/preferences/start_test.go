package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

func startArgs(t *testing.T, natsURL, dsn string, extra ...string) []string {
	t.Helper()
	key := filepath.Join(t.TempDir(), "dev.key")
	require.NoError(t, os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef"), 0o600))
	return append([]string{"--grpc-addr", "127.0.0.1:0", "--nats-url", natsURL, "--database-dsn", dsn,
		"--dev-signing-key-file", key, "--log-level", "error"}, extra...)
}

// With --migrate-on-start=false the service refuses a database that lacks
// its migrations, and says to run migrate.
func TestStartWithoutMigrationsRefusesAnOldSchema(t *testing.T) {
	ns, _, _ := testkit.NATS(t)
	dsn := filepath.Join(t.TempDir(), "p.db")
	err := run(startArgs(t, ns.ClientURL(), dsn, "--migrate-on-start=false"), os.Stdout)
	require.ErrorContains(t, err, "the database is at version 0, this binary needs 3: run the service's `migrate` command first")
}

// A NATS server older than 2.10 ends the process with one clear line instead
// of a half-started service.
func TestStartRefusesAnOldNATSServer(t *testing.T) {
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
				fmt.Fprint(c, `INFO {"server_id":"old","version":"2.9.25","proto":1,"headers":true,"max_payload":1048576,"jetstream":true}`+"\r\n")
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if strings.HasPrefix(sc.Text(), "PING") {
						_, _ = c.Write([]byte("PONG\r\n"))
					}
				}
			}()
		}
	}()
	err = run(startArgs(t, "nats://"+lis.Addr().String(), filepath.Join(t.TempDir(), "p.db")), os.Stdout)
	require.EqualError(t, err, "NATS server 2.9.25 is too old: clinicchat needs 2.10 or newer (multiple consumer filter subjects)")
}
