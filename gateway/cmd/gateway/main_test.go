package main

import (
	"github.com/clinicchat/clinicchat/gateway"

	"flag"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/svcmain"
)

func parse(t *testing.T, args ...string) (*gateway.BinaryConfig, error) {
	t.Helper()
	var cfg gateway.BinaryConfig
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.Flags(fs)
	if err := svcmain.Parse(fs, args); err != nil {
		return nil, err
	}
	return &cfg, cfg.Validate()
}

func TestConfigDefaultsAndEnvironment(t *testing.T) {
	t.Setenv("CLINICCHAT_AUDIT_ADDR", "audit.internal:9443")
	t.Setenv("CLINICCHAT_STEP_UP_WINDOW", "2m")
	cfg, err := parse(t, "--jwks-url", "https://id.example/jwks", "--jwt-issuer", "https://id.example", "--jwt-audience", "clinicchat")
	require.NoError(t, err)
	require.Equal(t, ":8080", cfg.HTTPAddr)
	require.Equal(t, "conversation:9090", cfg.Upstreams[0])
	require.Equal(t, "audit.internal:9443", cfg.Upstreams[4])
	require.Equal(t, 2*time.Minute, cfg.Gateway.StepUpWindow)
	require.Equal(t, 15*time.Second, cfg.Gateway.KeepAlive)
}

func TestConfigReportsEveryProblem(t *testing.T) {
	_, err := parse(t, "--http-addr", "", "--delivery-addr", "", "--dev", "--nats-tls-cert", "c.pem", "--sse-keepalive", "-1s")
	require.Error(t, err)
	for _, want := range []string{"--http-addr", "--delivery-addr", "--jwks-url or --dev-signing-key-file",
		"--dev needs", "--nats-tls-key", "--sse-keepalive"} {
		require.ErrorContains(t, err, want)
	}
}
