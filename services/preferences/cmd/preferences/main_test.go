package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/testkit"
	"github.com/clinicchat/clinicchat/services/preferences"
)

// "preferences migrate" applies the schema and exits, configured by flags or, as a
// Kubernetes init container runs it, by CLINICCHAT_* environment variables alone.
func TestMigrateSubcommand(t *testing.T) {
	testkit.MigrateSubcommand(t, "preferences", run, preferences.Migrate)
}

// Service-to-service TLS: a certificate that does not load, or a CA without
// the service's own certificate, stops the binary at start with the flag's
// name, before it connects to anything.
func TestTLSMisconfigurationFailsAtStart(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "dev.key")
	require.NoError(t, os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef"), 0o600))
	base := []string{"--database-dsn", filepath.Join(dir, "p.db"), "--dev-signing-key-file", key, "--nats-url", "nats://127.0.0.1:1"}

	err := run(append(base, "--tls-cert-file", filepath.Join(dir, "missing.crt"), "--tls-key-file", filepath.Join(dir, "missing.key")), io.Discard)
	require.ErrorContains(t, err, "tls: ")
	require.ErrorContains(t, err, "missing.crt")

	err = run(append(base, "--tls-ca-file", filepath.Join(dir, "ca.crt")), io.Discard)
	require.ErrorContains(t, err, "--tls-ca-file needs --tls-cert-file and --tls-key-file")
}
