package natsx

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MinServerVersion is the oldest NATS server clinicchat runs on: 2.10 added
// consumers with several filter subjects, which the services' consumers use.
const MinServerVersion = "2.10.0"

// CheckServer waits until nc is connected (or ctx ends), then checks the
// server: a version of at least MinServerVersion and JetStream enabled for
// the account. Its errors are one clear line, meant to end the process.
func CheckServer(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) error {
	if err := waitConnected(ctx, nc); err != nil {
		return err
	}
	version := nc.ConnectedServerVersion()
	if !versionAtLeast(version, MinServerVersion) {
		return fmt.Errorf("NATS server %s is too old: clinicchat needs 2.10 or newer (multiple consumer filter subjects)", version)
	}
	if _, err := js.AccountInfo(ctx); err != nil {
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return fmt.Errorf("NATS server %s at %s has JetStream disabled: clinicchat needs JetStream (nats-server -js, or jetstream {} in its configuration)",
				version, nc.ConnectedUrlRedacted())
		}
		return fmt.Errorf("NATS server %s: reading the JetStream account: %w", version, err)
	}
	return nil
}

// waitConnected waits for nc's first connection (Connect keeps retrying).
func waitConnected(ctx context.Context, nc *nats.Conn) error {
	ch := nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer nc.RemoveStatusListener(ch)
	for !nc.IsConnected() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("NATS: not connected: %w", ctx.Err())
		case st := <-ch:
			if st == nats.CLOSED {
				return errors.New("NATS: connection closed before it was established")
			}
		}
	}
	return nil
}

// versionAtLeast compares dotted versions ("2.9.25", "2.10.0-beta.1");
// an unreadable version is too old.
func versionAtLeast(have, want string) bool {
	h, ok1 := parseVersion(have)
	w, ok2 := parseVersion(want)
	if !ok1 || !ok2 {
		return false
	}
	for i := range 3 {
		if h[i] != w[i] {
			return h[i] > w[i]
		}
	}
	return true
}

func parseVersion(s string) ([3]int, bool) {
	var out [3]int
	s, _, _ = strings.Cut(strings.TrimPrefix(s, "v"), "-")
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return out, false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return out, false
		}
		out[i] = n
	}
	return out, true
}
