package allinone_test

import (
	"context"
	"github.com/clinicchat/clinicchat/services/attachment"
	"github.com/clinicchat/clinicchat/services/audit"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/services/platform/ratelimit"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// TestDevModeRefusesNonLoopback: dev mode (anyone may mint a practice_admin
// token) does not start on a non-loopback address unless the operator says
// so explicitly (it listened anywhere before).
func TestDevModeRefusesNonLoopback(t *testing.T) {
	for addr, want := range map[string]bool{"127.0.0.1:8080": true, "[::1]:80": true, "localhost:0": true,
		"0.0.0.0:8080": false, ":8080": false, "[::]:80": false, "10.0.0.5:80": false, "clinic.example:80": false} {
		require.Equal(t, want, allinone.IsLoopback(addr), addr)
	}
	cfg := allinone.Config{HTTPAddr: "0.0.0.0:0", GRPCAddr: "127.0.0.1:0", DataDir: t.TempDir(), Dev: true,
		ArchiveAfter: time.Hour, ArchiveSweepInterval: time.Hour, StepUpWindow: time.Minute}
	_, err := allinone.Start(context.Background(), cfg, testkit.Logger(t))
	require.ErrorContains(t, err, "--http-addr")
	require.ErrorContains(t, err, "loopback")

	cfg.DevAllowNonLoopback = true
	in, err := allinone.Start(context.Background(), cfg, testkit.Logger(t))
	require.NoError(t, err, "the operator said so explicitly")
	require.NoError(t, in.Stop())
}

// TestDemoProviderOnlyInDevMode: without --dev the demo artifact provider
// (invented appointments for any patient) is not served, nor used.
func TestDemoProviderOnlyInDevMode(t *testing.T) {
	services := func(in *allinone.Instance) []string {
		cc, err := grpc.NewClient(in.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		refl, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
		require.NoError(t, err)
		require.NoError(t, refl.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}))
		resp, err := refl.Recv()
		require.NoError(t, err)
		var out []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			out = append(out, s.GetName())
		}
		return out
	}
	// The demo provider runs on its own in-process server that only the
	// delivery service reaches, with its own credential: never on the
	// public address, in dev mode or not.
	const provider = "clinicchat.artifact.v1.ArtifactProviderService"
	require.NotContains(t, services(start(t, t.TempDir())), provider)
	prod := startWith(t, t.TempDir(), func(c *allinone.Config) {
		c.Dev = false
		c.JWKSURL, c.JWTIssuer, c.JWTAudience = "http://127.0.0.1:1/jwks.json", "https://issuer.example", "clinicchat"
		// Without dev mode the operator provides the keys.
		c.KeysDir = t.TempDir()
		c.AuditSigningKeyFile, c.AttachmentKEKFile = filepath.Join(c.KeysDir, "audit.key"), filepath.Join(c.KeysDir, "kek")
		require.NoError(t, audit.EnsureDevSignerKey(c.AuditSigningKeyFile, audit.DefaultSignerName))
		_, err := attachment.EnsureDevKEK(c.AttachmentKEKFile)
		require.NoError(t, err)
	})
	require.Nil(t, prod.DevIssuer)
	require.NotContains(t, services(prod), provider)
}

// TestArtifactsOfAnotherPracticesPatient: the artifact picker answers
// NOT_FOUND for a patient of another practice, or one that does not exist,
// instead of the provider's records.
func TestArtifactsOfAnotherPracticesPatient(t *testing.T) {
	h := harness{t: t, in: start(t, t.TempDir())}
	path := "/v1/patients/alice/artifacts?type=APPOINTMENT"
	var ok struct{ Artifacts []map[string]any }
	require.Equal(t, 200, h.as("dr-lee", "dentist").do("GET", path, nil, &ok))
	require.NotEmpty(t, ok.Artifacts, "the demo practice's own patient")

	var e apiError
	require.Equal(t, 404, h.asIn("dr-x", "dentist", "other-practice", 0).do("GET", path, nil, &e))
	require.Equal(t, "NOT_FOUND", e.reason())
	require.Equal(t, 404, h.as("dr-lee", "dentist").do("GET", "/v1/patients/made-up/artifacts?type=APPOINTMENT", nil, &e))
	require.Equal(t, "NOT_FOUND", e.reason())
}

// TestSendsPerIdentityAreLimited: past its send limit an identity gets 429
// with Retry-After (counted in /metrics), another identity is not affected.
func TestSendsPerIdentityAreLimited(t *testing.T) {
	in := startWith(t, t.TempDir(), func(c *allinone.Config) {
		c.Limits = ratelimit.Config{SendsPerSecond: 0.01, SendBurst: 3}
	})
	h := harness{t: t, in: in}
	lee := h.as("dr-lee", "dentist")
	conv := lee.startConversation("alice")
	for i := range 3 {
		lee.send(conv.Name, "hello", reqID("lim", i))
	}
	req, err := http.NewRequest("POST", lee.base+"/v1/"+conv.Name+"/messages",
		strings.NewReader(`{"text":"one more","requestId":"lim-x"}`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+lee.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "%s", body)
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
	require.Contains(t, string(body), "RESOURCE_EXHAUSTED")

	h.as("dr-kim", "hygienist").send(conv.Name, "from someone else", "kim-1")

	m, err := http.Get(lee.base + "/metrics")
	require.NoError(t, err)
	metrics, _ := io.ReadAll(m.Body)
	m.Body.Close()
	require.Contains(t, string(metrics), `clinicchat_limit_refusals_total{limit="sends"} 1`)
	require.Contains(t, string(metrics), `clinicchat_gateway_limited_total{limit="sends"} 1`)
}
