package grpcx

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TLSConfig is service-to-service TLS from files: a service's certificate
// and key (served to callers and, with a CA, presented to the services it
// calls) and the CA that signs every service's certificate. With CAFile set,
// the connection is mutual: a server accepts only clients whose certificate
// the CA signed, and a client trusts only servers the CA signed. The files are
// re-read when they change (cert-manager rotates them in place), so a rotated
// certificate is used from the next handshake on, without a restart.
type TLSConfig struct {
	CertFile string
	KeyFile  string
	CAFile   string
	// flagPrefix names the flags in messages ("upstream-" for the gateway).
	flagPrefix string
}

// Flags registers --tls-cert-file, --tls-key-file and --tls-ca-file.
func (c *TLSConfig) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.CertFile, "tls-cert-file", "", "PEM certificate of this process for service-to-service TLS: served on its gRPC listener and presented to the services it calls (empty: plaintext)")
	fs.StringVar(&c.KeyFile, "tls-key-file", "", "the certificate's PEM key")
	fs.StringVar(&c.CAFile, "tls-ca-file", "", "PEM CA that signs every service's certificate: servers require client certificates it signed (mutual TLS) and clients trust only servers it signed")
}

// ClientFlags registers --<prefix>tls-cert-file, -key-file and -ca-file for
// a process that only calls services (the gateway's upstreams).
func (c *TLSConfig) ClientFlags(fs *flag.FlagSet, prefix string) {
	c.flagPrefix = prefix
	fs.StringVar(&c.CertFile, prefix+"tls-cert-file", "", "PEM client certificate presented to the services (mutual TLS; empty: plaintext unless --"+prefix+"tls-ca-file)")
	fs.StringVar(&c.KeyFile, prefix+"tls-key-file", "", "the client certificate's PEM key")
	fs.StringVar(&c.CAFile, prefix+"tls-ca-file", "", "PEM CA that signs the services' certificates: the services are called over TLS")
}

// Enabled reports whether TLS is configured.
func (c TLSConfig) Enabled() bool { return c.CertFile != "" || c.CAFile != "" }

// Validate reports every problem at once.
func (c TLSConfig) Validate() error {
	if (c.CertFile == "") != (c.KeyFile == "") {
		return fmt.Errorf("--%[1]stls-cert-file and --%[1]stls-key-file go together", c.flagPrefix)
	}
	return nil
}

// ValidateServer is Validate for a process that also serves TLS: it needs
// its certificate whenever TLS is on.
func (c TLSConfig) ValidateServer() error {
	if err := c.Validate(); err != nil {
		return err
	}
	if c.CAFile != "" && c.CertFile == "" {
		return errors.New("--tls-ca-file needs --tls-cert-file and --tls-key-file: the gRPC listener serves TLS with them")
	}
	return nil
}

// ServerOptions are the options of a gRPC server that serves TLS (none when
// TLS is off). The files must load now; later changes are picked up at the
// next handshake.
func (c TLSConfig) ServerOptions() ([]grpc.ServerOption, error) {
	if !c.Enabled() {
		return nil, nil
	}
	if err := c.ValidateServer(); err != nil {
		return nil, err
	}
	f, err := c.files()
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m, err := f.load()
			if err != nil {
				return nil, err
			}
			sc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*m.cert}, NextProtos: []string{"h2"}}
			if m.pool != nil {
				sc.ClientAuth, sc.ClientCAs = tls.RequireAndVerifyClientCert, m.pool
			}
			return sc, nil
		},
	}
	return []grpc.ServerOption{grpc.Creds(credentials.NewTLS(cfg))}, nil
}

// DialOptions are the options of a client of a service that serves TLS
// (none when TLS is off): the CA (or the system roots without one) to trust
// and this process's certificate as its client certificate.
func (c TLSConfig) DialOptions() ([]grpc.DialOption, error) {
	if !c.Enabled() {
		return nil, nil
	}
	f, err := c.files()
	if err != nil {
		return nil, err
	}
	return []grpc.DialOption{grpc.WithTransportCredentials(&reloadingCreds{files: f,
		TransportCredentials: credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})})}, nil
}

// files loads the configured files once, so a bad file fails at start-up.
func (c TLSConfig) files() (*tlsFiles, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	f := &tlsFiles{cfg: c}
	if _, err := f.load(); err != nil {
		return nil, err
	}
	return f, nil
}

// tlsFiles re-reads the files at every handshake and parses them again only
// when their bytes changed. A change that does not parse (a rotation caught
// half-written) keeps the last good material until it does.
type tlsFiles struct {
	cfg TLSConfig

	mu   sync.Mutex
	raw  [3][]byte
	last *tlsMaterial
}

type tlsMaterial struct {
	cert *tls.Certificate // nil without --tls-cert-file
	pool *x509.CertPool   // nil without --tls-ca-file
}

func (f *tlsFiles) load() (*tlsMaterial, error) {
	var raw [3][]byte
	for i, name := range []string{f.cfg.CertFile, f.cfg.KeyFile, f.cfg.CAFile} {
		if name == "" {
			continue
		}
		b, err := os.ReadFile(name)
		if err != nil {
			return f.keep(fmt.Errorf("tls: %w", err))
		}
		raw[i] = b
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.last != nil && bytes.Equal(raw[0], f.raw[0]) && bytes.Equal(raw[1], f.raw[1]) && bytes.Equal(raw[2], f.raw[2]) {
		return f.last, nil
	}
	m := &tlsMaterial{}
	if raw[0] != nil {
		cert, err := tls.X509KeyPair(raw[0], raw[1])
		if err != nil {
			return f.keepLocked(fmt.Errorf("tls: --%[1]stls-cert-file %[2]s with --%[1]stls-key-file %[3]s: %[4]w", f.cfg.flagPrefix, f.cfg.CertFile, f.cfg.KeyFile, err))
		}
		m.cert = &cert
	}
	if raw[2] != nil {
		m.pool = x509.NewCertPool()
		if !m.pool.AppendCertsFromPEM(raw[2]) {
			return f.keepLocked(fmt.Errorf("tls: --%stls-ca-file %s: no PEM certificate in it", f.cfg.flagPrefix, f.cfg.CAFile))
		}
	}
	f.raw, f.last = raw, m
	return m, nil
}

func (f *tlsFiles) keep(err error) (*tlsMaterial, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.keepLocked(err)
}

func (f *tlsFiles) keepLocked(err error) (*tlsMaterial, error) {
	if f.last != nil {
		return f.last, nil
	}
	return nil, err
}

// reloadingCreds are client TLS credentials built from the files as they
// are at each handshake: the CA to trust and the client certificate.
type reloadingCreds struct {
	credentials.TransportCredentials // for Info
	files                            *tlsFiles
}

func (r *reloadingCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	m, err := r.files.load()
	if err != nil {
		return nil, nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: m.pool}
	if m.cert != nil {
		cert := m.cert
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return credentials.NewTLS(cfg).ClientHandshake(ctx, authority, conn)
}

func (r *reloadingCreds) Clone() credentials.TransportCredentials {
	return &reloadingCreds{TransportCredentials: r.TransportCredentials.Clone(), files: r.files}
}

// NewHealthServer returns a plaintext server answering only gRPC health from
// h (a TLS server's health), for probes that cannot speak TLS, such as the
// kubelet's gRPC probe. Health carries no token and no data.
func NewHealthServer(h healthpb.HealthServer) *grpc.Server {
	s := grpc.NewServer(grpc.MaxConcurrentStreams(16), grpc.ConnectionTimeout(5*time.Second))
	healthpb.RegisterHealthServer(s, h)
	return s
}

// ServingTLS is the tls.Config of a public listener that serves this
// certificate without asking clients for one (the gateway's HTTP listener
// and gRPC edge behind an ingress): the files are re-read at each handshake
// as for service-to-service TLS. prefix names the flags in messages.
func ServingTLS(certFile, keyFile, prefix string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("--%[1]stls-cert-file and --%[1]stls-key-file go together", prefix)
	}
	f, err := TLSConfig{CertFile: certFile, KeyFile: keyFile, flagPrefix: prefix}.files()
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		m, err := f.load()
		if err != nil {
			return nil, err
		}
		return m.cert, nil
	}}, nil
}
