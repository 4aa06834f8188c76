// Package natsx connects to NATS JetStream (an external cluster or an embedded
// server), declares clinicchat's streams as data and reconciles them at start,
// and runs durable consumers that ack only after the handler's commit.
package natsx

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// Config says how to reach NATS.
type Config struct {
	URL       string // nats://host:4222[,nats://…]
	CredsFile string // NKey/JWT user credentials file
	// User and Password log in as a user of the server's authorization
	// block (see PublishAllow for what each process's user may publish).
	User     string
	Password string
	// NKeySeedFile logs in with an NKey (the seed file's public key is
	// the user in the server's configuration).
	NKeySeedFile string
	TLSCA        string // CA bundle for the server certificate
	TLSCert      string // client certificate (mutual TLS)
	TLSKey       string
	Name         string // connection name, e.g. the service
}

// Connect dials NATS and keeps reconnecting forever.
func Connect(cfg Config) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.NKeySeedFile != "" {
		opt, err := nats.NkeyOptionFromSeed(cfg.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("nats nkey seed: %w", err)
		}
		opts = append(opts, opt)
	}
	if cfg.TLSCA != "" || cfg.TLSCert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.TLSCA != "" {
			pem, err := os.ReadFile(cfg.TLSCA)
			if err != nil {
				return nil, fmt.Errorf("nats tls ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, errors.New("nats tls ca: no certificates")
			}
			tc.RootCAs = pool
		}
		if cfg.TLSCert != "" {
			cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
			if err != nil {
				return nil, fmt.Errorf("nats tls client cert: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, nats.Secure(tc))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect nats: %w", err)
	}
	return nc, nil
}

// EmbeddedConfig configures the all-in-one's in-process NATS server.
type EmbeddedConfig struct {
	StoreDir string // JetStream file store
	// Listen, when set ("127.0.0.1:4223"), also accepts network clients;
	// otherwise the server listens on no port and only in-process clients connect.
	Listen string
}

// StartEmbedded starts a NATS server with JetStream and returns it with an
// in-process client connection.
func StartEmbedded(cfg EmbeddedConfig, log *zap.Logger) (*server.Server, *nats.Conn, error) {
	opts := &server.Options{
		ServerName: "clinicchat",
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		DontListen: cfg.Listen == "",
		NoSigs:     true,
		NoLog:      true,
	}
	if cfg.Listen != "" {
		host, port, err := splitHostPort(cfg.Listen)
		if err != nil {
			return nil, nil, err
		}
		opts.Host, opts.Port = host, port
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, nil, fmt.Errorf("embedded nats: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, nil, errors.New("embedded nats: not ready after 30s")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns), nats.Name("clinicchat"), nats.MaxReconnects(-1))
	if err != nil {
		ns.Shutdown()
		return nil, nil, fmt.Errorf("embedded nats: connect: %w", err)
	}
	log.Info("embedded nats started", zap.String("store_dir", cfg.StoreDir), zap.Bool("listening", cfg.Listen != ""))
	return ns, nc, nil
}

func splitHostPort(addr string) (string, int, error) {
	var host string
	var port int
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			host = addr[:i]
			if _, err := fmt.Sscanf(addr[i+1:], "%d", &port); err != nil {
				return "", 0, fmt.Errorf("nats listen address %q: %w", addr, err)
			}
			return host, port, nil
		}
	}
	return "", 0, fmt.Errorf("nats listen address %q: want host:port", addr)
}
