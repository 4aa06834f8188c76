package localcluster

import (
	"fmt"

	"github.com/clinicchat/clinicchat/services/platform/grpcx"
)

// serviceCerts makes the local CA (once per data dir, under <data-dir>/tls)
// and a certificate for every process, for loopback, as cert-manager does in
// a cluster: every service serves mutual TLS and calls its peers with its own
// certificate; the gateway and the cluster's seeding call with theirs.
func (c *Cluster) serviceCerts() error {
	c.tls = map[string]grpcx.TLSConfig{}
	if c.cfg.PlaintextServices {
		return nil
	}
	dir := c.path("tls")
	ca, err := grpcx.LoadOrCreateDevCA(dir, "clinicchat local cluster CA")
	if err != nil {
		return err
	}
	names := []string{"gateway", "localcluster", "preferences", "conversation", "attachment", "audit"}
	for i := range c.cfg.DeliveryReplicas {
		names = append(names, fmt.Sprintf("delivery-%d", i+1))
	}
	for _, name := range names {
		if c.tls[name], err = ca.WriteCert(dir, name, []string{"127.0.0.1", "localhost"}); err != nil {
			return fmt.Errorf("certificate of %s: %w", name, err)
		}
	}
	return nil
}

// tlsArgs are a process's TLS flags (none with PlaintextServices); prefix is
// "upstream-" for the gateway.
func (c *Cluster) tlsArgs(name, prefix string) []string {
	t, ok := c.tls[name]
	if !ok {
		return nil
	}
	return []string{"--" + prefix + "tls-cert-file", t.CertFile, "--" + prefix + "tls-key-file", t.KeyFile,
		"--" + prefix + "tls-ca-file", t.CAFile}
}
