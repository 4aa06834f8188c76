package delivery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/credentials/oauth"
	"google.golang.org/grpc/metadata"

	"github.com/clinicchat/clinicchat/services/platform/auth"
)

// ArtifactProviderConfig is how delivery reaches a practice system's
// ArtifactProvider: over TLS (system roots or a configured CA, optionally
// with a client certificate), authenticated with the service's own
// credential — a static token from a file, or an OAuth 2.0 client-credentials
// access token. An end user's token never leaves: the practice and the
// patient travel as request fields.
type ArtifactProviderConfig struct {
	Addr string
	// CAFile is a PEM bundle that verifies the provider's certificate
	// (empty: the system roots).
	CAFile string
	// ServerName overrides the name checked in the provider's certificate
	// (default: the host of Addr).
	ServerName string
	// ClientCertFile and ClientKeyFile: an optional client certificate (mTLS).
	ClientCertFile string
	ClientKeyFile  string
	// TokenFile holds a static bearer token for the provider.
	TokenFile string
	// OAuth 2.0 client credentials (instead of TokenFile).
	OAuthTokenURL         string
	OAuthClientID         string
	OAuthClientSecretFile string
	OAuthScopes           string // comma separated
	// OAuthHTTPClient fetches OAuth tokens (tests; default http.DefaultClient).
	OAuthHTTPClient *http.Client

	// Token is a static token given in code (the all-in-one's demo
	// provider) instead of TokenFile. Never set from flags.
	Token string
	// InProcess dials an in-process listener without TLS (the all-in-one's
	// demo provider, which never leaves the process). Never set from flags.
	InProcess func(context.Context) (net.Conn, error)
}

// Flags registers the --artifact-provider-* flags.
func (c *ArtifactProviderConfig) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.Addr, "artifact-provider-addr", "", "the practice system's ArtifactProvider gRPC address, host:port over TLS (empty: none)")
	fs.StringVar(&c.CAFile, "artifact-provider-ca-file", "", "PEM CA bundle for the ArtifactProvider's certificate (default: system roots)")
	fs.StringVar(&c.ServerName, "artifact-provider-server-name", "", "name expected in the ArtifactProvider's certificate (default: the host of the address)")
	fs.StringVar(&c.ClientCertFile, "artifact-provider-client-cert-file", "", "optional client certificate (PEM) for the ArtifactProvider")
	fs.StringVar(&c.ClientKeyFile, "artifact-provider-client-key-file", "", "the client certificate's key (PEM)")
	fs.StringVar(&c.TokenFile, "artifact-provider-token-file", "", "file holding the service's static bearer token for the ArtifactProvider")
	fs.StringVar(&c.OAuthTokenURL, "artifact-provider-oauth-token-url", "", "OAuth 2.0 token endpoint (client credentials) for the ArtifactProvider")
	fs.StringVar(&c.OAuthClientID, "artifact-provider-oauth-client-id", "", "OAuth 2.0 client id")
	fs.StringVar(&c.OAuthClientSecretFile, "artifact-provider-oauth-client-secret-file", "", "file holding the OAuth 2.0 client secret")
	fs.StringVar(&c.OAuthScopes, "artifact-provider-oauth-scopes", "", "OAuth 2.0 scopes, comma separated")
}

// Validate reports every problem at once (nothing to check without an address).
func (c *ArtifactProviderConfig) Validate() error {
	if c.Addr == "" && c.InProcess == nil {
		return nil
	}
	var problems []error
	oauthSet := c.OAuthTokenURL != "" || c.OAuthClientID != "" || c.OAuthClientSecretFile != ""
	switch {
	case c.Token != "":
	case c.TokenFile == "" && !oauthSet:
		problems = append(problems, errors.New("--artifact-provider-addr needs the service's credential: --artifact-provider-token-file or --artifact-provider-oauth-*"))
	case c.TokenFile != "" && oauthSet:
		problems = append(problems, errors.New("--artifact-provider-token-file and --artifact-provider-oauth-* exclude each other"))
	case oauthSet && (c.OAuthTokenURL == "" || c.OAuthClientID == "" || c.OAuthClientSecretFile == ""):
		problems = append(problems, errors.New("--artifact-provider-oauth-token-url, -client-id and -client-secret-file go together"))
	}
	if (c.ClientCertFile == "") != (c.ClientKeyFile == "") {
		problems = append(problems, errors.New("--artifact-provider-client-cert-file and --artifact-provider-client-key-file go together"))
	}
	return errors.Join(problems...)
}

// DialArtifactProvider opens the connection to the practice system's
// ArtifactProvider. ctx bounds the OAuth token source's lifetime.
func DialArtifactProvider(ctx context.Context, c ArtifactProviderConfig) (*grpc.ClientConn, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	creds, err := c.perRPC(ctx)
	if err != nil {
		return nil, err
	}
	opts := []grpc.DialOption{
		grpc.WithPerRPCCredentials(creds),
		grpc.WithChainUnaryInterceptor(dropAuthorization),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(4 << 20)),
	}
	target := c.Addr
	if c.InProcess != nil {
		target = "passthrough:///artifact-provider"
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return c.InProcess(ctx) }))
	} else {
		tc, err := c.tlsConfig()
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	}
	return grpc.NewClient(target, opts...)
}

func (c *ArtifactProviderConfig) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--artifact-provider-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("--artifact-provider-ca-file: no PEM certificate in it")
		}
		tc.RootCAs = pool
	}
	if c.ClientCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.ClientCertFile, c.ClientKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--artifact-provider-client-cert-file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

func (c *ArtifactProviderConfig) perRPC(ctx context.Context) (credentials.PerRPCCredentials, error) {
	secure := c.InProcess == nil
	if c.Token != "" {
		return staticToken{token: c.Token, secure: secure}, nil
	}
	if c.TokenFile != "" {
		tok, err := readSecret(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("--artifact-provider-token-file: %w", err)
		}
		return staticToken{token: tok, secure: secure}, nil
	}
	secret, err := readSecret(c.OAuthClientSecretFile)
	if err != nil {
		return nil, fmt.Errorf("--artifact-provider-oauth-client-secret-file: %w", err)
	}
	cc := clientcredentials.Config{ClientID: c.OAuthClientID, ClientSecret: secret, TokenURL: c.OAuthTokenURL}
	for _, s := range strings.Split(c.OAuthScopes, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cc.Scopes = append(cc.Scopes, s)
		}
	}
	if c.OAuthHTTPClient != nil {
		ctx = context.WithValue(ctx, oauth2.HTTPClient, c.OAuthHTTPClient)
	}
	// The token source caches the access token until shortly before it expires.
	return oauth.TokenSource{TokenSource: cc.TokenSource(ctx)}, nil
}

func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", errors.New("the file is empty")
	}
	return s, nil
}

// staticToken sends a configured token as "Bearer <token>".
type staticToken struct {
	token  string
	secure bool
}

func (s staticToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{auth.MetadataKey: "Bearer " + s.token}, nil
}

func (s staticToken) RequireTransportSecurity() bool { return s.secure }

// dropAuthorization removes any authorization metadata a caller put on the
// outgoing context, so only the service's own credential is sent.
func dropAuthorization(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(auth.MetadataKey)) > 0 {
		md = md.Copy()
		md.Delete(auth.MetadataKey)
		ctx = metadata.NewOutgoingContext(ctx, md)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}
