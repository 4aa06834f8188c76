package grpcx_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// startTLSServer serves health over TLS from cfg on a loopback port.
func startTLSServer(t testing.TB, cfg grpcx.TLSConfig) string {
	t.Helper()
	_, verifier := testkit.NewTokens()
	opts, err := cfg.ServerOptions()
	require.NoError(t, err)
	srv := grpcx.NewServer(testkit.Logger(t), verifier, opts...)
	srv.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func check(t *testing.T, addr string, opts ...grpc.DialOption) error {
	t.Helper()
	cc, err := grpcx.Dial(addr, opts...)
	require.NoError(t, err)
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func dialOpts(t *testing.T, cfg grpcx.TLSConfig) []grpc.DialOption {
	t.Helper()
	opts, err := cfg.DialOptions()
	require.NoError(t, err)
	return opts
}

func newPKI(t testing.TB) (dir string, ca *grpcx.DevCA, server, client grpcx.TLSConfig) {
	t.Helper()
	dir = t.TempDir()
	ca, err := grpcx.LoadOrCreateDevCA(dir, "test CA")
	require.NoError(t, err)
	server, err = ca.WriteCert(dir, "conversation", []string{"127.0.0.1", "conversation"})
	require.NoError(t, err)
	client, err = ca.WriteCert(dir, "gateway", []string{"gateway"})
	require.NoError(t, err)
	return dir, ca, server, client
}

// A service started with TLS refuses a plaintext client, and a client
// without a certificate of the cluster's CA (mutual TLS), and one that does
// not trust the CA; a client with the CA and its own certificate gets in.
func TestTLSServerRefusesPlaintextClient(t *testing.T) {
	_, _, server, client := newPKI(t)
	addr := startTLSServer(t, server)

	err := check(t, addr)
	require.Error(t, err, "plaintext client")
	require.Equal(t, codes.Unavailable, status.Code(err))

	require.Error(t, check(t, addr, dialOpts(t, grpcx.TLSConfig{CAFile: client.CAFile})...), "no client certificate")

	otherDir := t.TempDir()
	other, err := grpcx.LoadOrCreateDevCA(otherDir, "another CA")
	require.NoError(t, err)
	stranger, err := other.WriteCert(otherDir, "stranger", []string{"stranger"})
	require.NoError(t, err)
	require.Error(t, check(t, addr, dialOpts(t, stranger)...), "a certificate of another CA")

	require.NoError(t, check(t, addr, dialOpts(t, client)...), "mutual TLS with the cluster CA")
}

// A comma-separated list of replicas checks each replica's certificate
// against its own host.
func TestTLSReplicaList(t *testing.T) {
	_, _, server, client := newPKI(t)
	a, b := startTLSServer(t, server), startTLSServer(t, server)
	require.NoError(t, check(t, a+","+b, dialOpts(t, client)...))
}

// cert-manager rotates the files in place: the next handshake serves the
// new certificate, without a restart; a half-written rotation keeps the old.
func TestTLSReloadsRotatedCertificate(t *testing.T) {
	dir, ca, server, client := newPKI(t)
	addr := startTLSServer(t, server)
	served := func() *x509.Certificate {
		t.Helper()
		cert, err := tls.LoadX509KeyPair(client.CertFile, client.KeyFile)
		require.NoError(t, err)
		pool := x509.NewCertPool()
		require.True(t, pool.AppendCertsFromPEM(ca.CertPEM))
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert},
			ServerName: "127.0.0.1", NextProtos: []string{"h2"}})
		require.NoError(t, err)
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0]
	}
	before := served()

	rotated, err := ca.WriteCert(dir, "conversation", []string{"127.0.0.1", "conversation"})
	require.NoError(t, err)
	require.Equal(t, server, rotated)
	after := served()
	require.NotEqual(t, before.SerialNumber, after.SerialNumber, "the rotated certificate is served")

	// A new key without its certificate yet: the last good pair stays.
	_, keyPEM, err := ca.Issue("x", []string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	require.NoError(t, writeFile(server.KeyFile, keyPEM))
	require.Equal(t, after.SerialNumber, served().SerialNumber)
	require.NoError(t, check(t, addr, dialOpts(t, client)...))
}

func TestTLSConfigValidate(t *testing.T) {
	require.ErrorContains(t, grpcx.TLSConfig{CertFile: "a"}.Validate(), "go together")
	require.ErrorContains(t, grpcx.TLSConfig{CAFile: "ca"}.ValidateServer(), "--tls-ca-file needs")
	require.NoError(t, grpcx.TLSConfig{CAFile: "ca"}.Validate(), "a client may trust a CA without a certificate")
	_, err := grpcx.TLSConfig{CertFile: "/nonexistent.crt", KeyFile: "/nonexistent.key"}.ServerOptions()
	require.Error(t, err, "files that do not load fail at start-up")
}

func writeFile(name string, b []byte) error { return os.WriteFile(name, b, 0o600) }

// The kubelet's gRPC probe cannot speak TLS: the plaintext health listener
// answers the TLS server's health, and nothing else.
func TestHealthServerIsPlaintextHealthOnly(t *testing.T) {
	_, _, server, _ := newPKI(t)
	_, verifier := testkit.NewTokens()
	opts, err := server.ServerOptions()
	require.NoError(t, err)
	srv := grpcx.NewServer(testkit.Logger(t), verifier, opts...)
	hs := grpcx.NewHealthServer(srv.Health)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = hs.Serve(lis) }()
	t.Cleanup(hs.Stop)

	srv.Health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	cc, err := grpcx.Dial(lis.Addr().String())
	require.NoError(t, err)
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, resp.GetStatus())
	srv.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	resp, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus(), "the TLS server's status")

	err = cc.Invoke(ctx, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
	require.Equal(t, codes.Unimplemented, status.Code(err), "nothing but health")
}

// A client's rotated certificate is presented from its next connection on,
// with the same dial options (no restart).
func TestTLSClientPresentsRotatedCertificate(t *testing.T) {
	dir, ca, server, client := newPKI(t)
	seen := make(chan *x509.Certificate, 4)
	_, verifier := testkit.NewTokens()
	opts, err := server.ServerOptions()
	require.NoError(t, err)
	srv := grpcx.NewServer(testkit.Logger(t), verifier, append(opts, grpc.ChainUnaryInterceptor(
		func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if p, ok := peer.FromContext(ctx); ok {
				if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
					seen <- ti.State.PeerCertificates[0]
				}
			}
			return h(ctx, req)
		}))...)
	srv.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	dial := dialOpts(t, client) // one set of options, as a process keeps them
	require.NoError(t, check(t, lis.Addr().String(), dial...))
	first := <-seen
	rotated, err := ca.WriteCert(dir, "gateway", []string{"gateway"})
	require.NoError(t, err)
	require.Equal(t, client, rotated)
	require.NoError(t, check(t, lis.Addr().String(), dial...))
	second := <-seen
	require.NotEqual(t, first.SerialNumber, second.SerialNumber, "the new connection presents the rotated certificate")
}

// The gateway's public listeners behind an ingress: HTTPS (HTTP/2 and
// HTTP/1.1) with the served certificate, no client certificate asked, the
// rotated certificate from the next handshake, and a plaintext request gets
// no answer of the application.
func TestServingTLS(t *testing.T) {
	dir, ca, server, _ := newPKI(t)
	cfg, err := grpcx.ServingTLS(server.CertFile, server.KeyFile, "http-")
	require.NoError(t, err)
	srv := &http.Server{TLSConfig: cfg, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Proto)
	})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.ServeTLS(lis, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	url := "https://" + lis.Addr().String() + "/"

	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(ca.CertPEM))
	get := func(h2 bool) (string, *x509.Certificate) {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: h2}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return string(body), resp.TLS.PeerCertificates[0]
	}
	proto, before := get(true)
	require.Equal(t, "HTTP/2.0", proto)
	proto, _ = get(false)
	require.Equal(t, "HTTP/1.1", proto)

	_, err = ca.WriteCert(dir, "conversation", []string{"127.0.0.1", "conversation"})
	require.NoError(t, err)
	_, after := get(true)
	require.NotEqual(t, before.SerialNumber, after.SerialNumber, "the rotated certificate is served")

	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + lis.Addr().String() + "/")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NotContains(t, string(body), "HTTP/", "plaintext never reaches the handler")
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	}

	_, err = grpcx.ServingTLS(server.CertFile, "", "http-")
	require.ErrorContains(t, err, "--http-tls-cert-file and --http-tls-key-file go together")
}
