package delivery_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"

	artifactv1 "github.com/clinicchat/clinicchat/proto/clinicchat/artifact/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/delivery"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// fakeProvider is a practice system's ArtifactProvider over TLS that records
// the authorization metadata and the request fields of every call.
type fakeProvider struct {
	artifactv1.UnimplementedArtifactProviderServiceServer
	mu       sync.Mutex
	authz    []string
	requests []*artifactv1.ListArtifactRecordsRequest
}

func (f *fakeProvider) ListArtifactRecords(ctx context.Context, r *artifactv1.ListArtifactRecordsRequest) (*artifactv1.ListArtifactRecordsResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.authz = append(f.authz, md.Get("authorization")...)
	f.requests = append(f.requests, r)
	return &artifactv1.ListArtifactRecordsResponse{Records: []*artifactv1.ArtifactRecord{{Patient: r.GetPatient(),
		Artifact: &artifactv1.Artifact{Type: artifactv1.Artifact_APPOINTMENT, Ref: "appt-1", Preview: &artifactv1.ArtifactPreview{Title: "Cleaning"}}}}}, nil
}

// selfSigned makes a certificate for 127.0.0.1 and writes it as a CA file.
func selfSigned(t *testing.T) (tls.Certificate, string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "practice-system"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"practice-system.test"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, ca
}

func startTLSProvider(t *testing.T) (*fakeProvider, string, string) {
	cert, ca := selfSigned(t)
	fake := &fakeProvider{}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	artifactv1.RegisterArtifactProviderServiceServer(srv, fake)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return fake, lis.Addr().String(), ca
}

func secretFile(t *testing.T, s string) string {
	p := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(p, []byte(s+"\n"), 0o600))
	return p
}

// startDelivery runs the real delivery service behind the real gRPC server
// (token verification) with its ArtifactProvider connection from cfg, and
// returns a client that calls it as a staff user.
func startDelivery(t *testing.T, cfg delivery.ArtifactProviderConfig) (deliveryv1.DeliveryServiceClient, string) {
	ctx := context.Background()
	_, _, js := testkit.NATS(t)
	tokens, verifier := testkit.NewTokens()
	artifacts, err := delivery.DialArtifactProvider(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = artifacts.Close() })
	unused, err := grpcx.Dial("127.0.0.1:1")
	require.NoError(t, err)
	t.Cleanup(func() { _ = unused.Close() })
	// The directory knows the patient (ListArtifacts checks the patient is
	// of the caller's practice before it asks the practice system).
	dirSrv := grpc.NewServer()
	preferencesv1.RegisterPreferencesServiceServer(dirSrv, fakeDirectory{})
	dirLis := bufconn.Listen(1 << 20)
	go func() { _ = dirSrv.Serve(dirLis) }()
	t.Cleanup(dirSrv.Stop)
	directory, err := grpcx.DialListener(dirLis.DialContext)
	require.NoError(t, err)
	t.Cleanup(func() { _ = directory.Close() })
	svc, err := delivery.New(ctx, delivery.Config{DatabaseDSN: filepath.Join(t.TempDir(), "delivery.db"), StepUpWindow: time.Minute},
		delivery.Deps{Log: testkit.Logger(t), JS: js, Conversations: unused, Preferences: directory, Attachments: unused, Artifacts: artifacts})
	require.NoError(t, err)
	t.Cleanup(func() { _ = svc.Close() })
	srv := grpcx.NewServer(testkit.Logger(t), verifier)
	svc.Register(srv.Server)
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpcx.DialListener(lis.DialContext)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return deliveryv1.NewDeliveryServiceClient(conn), tokens.Token(t, "dr-lee", auth.RoleDentist, "demo", 0)
}

func asUser(token string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
}

// TestUserTokenNeverReachesPracticeSystem: delivery calls the practice
// system's ArtifactProvider over TLS with its own static token; the staff
// user's token stays inside clinicchat; practice and patient travel as fields.
func TestUserTokenNeverReachesPracticeSystem(t *testing.T) {
	fake, addr, ca := startTLSProvider(t)
	client, userToken := startDelivery(t, delivery.ArtifactProviderConfig{Addr: addr, CAFile: ca, TokenFile: secretFile(t, "service-credential")})

	resp, err := client.ListArtifacts(asUser(userToken), &deliveryv1.ListArtifactsRequest{Parent: "patients/alice"})
	require.NoError(t, err)
	require.Len(t, resp.GetArtifacts(), 1)

	fake.mu.Lock()
	defer fake.mu.Unlock()
	require.Equal(t, []string{"Bearer service-credential"}, fake.authz, "only the service's credential reaches the provider")
	for _, a := range fake.authz {
		require.NotContains(t, a, userToken)
	}
	require.Len(t, fake.requests, 1)
	require.Equal(t, "demo", fake.requests[0].GetPractice())
	require.Equal(t, "patients/alice", fake.requests[0].GetPatient())
}

// TestUserTokenNeverReachesPracticeSystemWithOAuth: the same with an OAuth 2.0
// client-credentials access token.
func TestUserTokenNeverReachesPracticeSystemWithOAuth(t *testing.T) {
	fake, addr, ca := startTLSProvider(t)
	var tokenCalls int
	var mu sync.Mutex
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		tokenCalls++
		mu.Unlock()
		id, secret, ok := r.BasicAuth()
		if !ok || id != "clinicchat-delivery" || secret != "s3cret" || r.FormValue("grant_type") != "client_credentials" {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"oauth-access-token","token_type":"Bearer","expires_in":3600}`))
	}))
	defer idp.Close()
	client, userToken := startDelivery(t, delivery.ArtifactProviderConfig{Addr: addr, CAFile: ca, OAuthTokenURL: idp.URL,
		OAuthClientID: "clinicchat-delivery", OAuthClientSecretFile: secretFile(t, "s3cret"), OAuthScopes: "artifacts.read"})

	for range 2 {
		_, err := client.ListArtifacts(asUser(userToken), &deliveryv1.ListArtifactsRequest{Parent: "patients/alice"})
		require.NoError(t, err)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	require.Equal(t, []string{"Bearer oauth-access-token", "Bearer oauth-access-token"}, fake.authz)
	mu.Lock()
	require.Equal(t, 1, tokenCalls, "the access token is reused until it expires")
	mu.Unlock()
}

// TestArtifactProviderRefusesUntrustedCertificate: without the provider's CA
// (system roots only) the TLS handshake fails; nothing is sent in clear.
func TestArtifactProviderRefusesUntrustedCertificate(t *testing.T) {
	fake, addr, _ := startTLSProvider(t)
	client, userToken := startDelivery(t, delivery.ArtifactProviderConfig{Addr: addr, TokenFile: secretFile(t, "service-credential")})
	_, err := client.ListArtifacts(asUser(userToken), &deliveryv1.ListArtifactsRequest{Parent: "patients/alice"})
	require.Error(t, err)
	fake.mu.Lock()
	defer fake.mu.Unlock()
	require.Empty(t, fake.authz)
}

func TestArtifactProviderConfigNeedsServiceCredential(t *testing.T) {
	cfg := delivery.ArtifactProviderConfig{Addr: "pms.example:443", ClientCertFile: "c.pem"}
	err := cfg.Validate()
	require.ErrorContains(t, err, "--artifact-provider-token-file or --artifact-provider-oauth-*")
	require.ErrorContains(t, err, "--artifact-provider-client-key-file")
	cfg = delivery.ArtifactProviderConfig{Addr: "pms.example:443", TokenFile: "t", OAuthTokenURL: "https://idp/token"}
	require.ErrorContains(t, cfg.Validate(), "exclude each other")
	require.NoError(t, (&delivery.ArtifactProviderConfig{}).Validate(), "no provider: nothing to configure")
}

// fakeDirectory is a PreferencesService that knows every patient (a
// hand-written fake of delivery's directory port).
type fakeDirectory struct {
	preferencesv1.UnimplementedPreferencesServiceServer
}

func (fakeDirectory) GetPatient(_ context.Context, r *preferencesv1.GetPatientRequest) (*preferencesv1.Patient, error) {
	return &preferencesv1.Patient{Name: r.GetName(), DisplayName: "Alice Johnson", HasPortalAccount: true, ChatOptIn: true}, nil
}
