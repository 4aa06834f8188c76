package natsx

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

// Processes are the NATS users of a deployment: one per service, and the
// gateway. Each logs in as its own user (--nats-user) so that the server
// lets it publish only its own events (PublishAllow).
var Processes = []string{"conversation", "delivery", "attachment", "preferences", "audit", "gateway"}

// gatewayJSAPI is the JetStream API the gateway uses: reading stream heads
// and running its ordered and catch-up consumers. It creates, changes and
// purges no stream, and acks nothing.
var gatewayJSAPI = []string{
	"$JS.API.INFO",
	"$JS.API.STREAM.INFO.*",
	"$JS.API.CONSUMER.CREATE.>",
	"$JS.API.CONSUMER.DELETE.>",
	"$JS.API.CONSUMER.INFO.>",
	"$JS.API.CONSUMER.MSG.NEXT.>",
}

// PublishAllow is what process's NATS user may publish: its own events
// (<prefix>.<process>.>) and the JetStream subjects it needs. A service
// declares the streams and runs durable consumers (the JetStream API and
// acks); the gateway publishes only its own access events and reads. So
// an event of another service can only come from that service: a gateway
// (or any other process) that forges, say, delivery's message.created is
// refused by the server, and the audit log, which consumes the streams,
// never sees it.
func PublishAllow(process string) ([]string, error) {
	if !slices.Contains(Processes, process) {
		return nil, fmt.Errorf("no NATS user for %q (want one of %s)", process, strings.Join(Processes, ", "))
	}
	own := prefix + "." + process + ".>"
	if process == "gateway" {
		return append([]string{own}, gatewayJSAPI...), nil
	}
	return []string{own, "$JS.API.>", "$JS.ACK.>"}, nil
}

// ServerUsers are the server-side users for passwords (process → password;
// every process of Processes must have one), with PublishAllow's
// permissions. Subscriptions are not limited (replies arrive on inboxes).
func ServerUsers(passwords map[string]string) ([]*server.User, error) {
	var out []*server.User
	var errs []error
	for _, p := range Processes {
		allow, err := PublishAllow(p)
		if err != nil {
			return nil, err
		}
		if passwords[p] == "" {
			errs = append(errs, fmt.Errorf("no password for the NATS user %s", p))
			continue
		}
		out = append(out, &server.User{Username: p, Password: passwords[p],
			Permissions: &server.Permissions{Publish: &server.SubjectPermission{Allow: allow}}})
	}
	return out, errors.Join(errs...)
}

// AuthorizationConf is the nats.conf authorization block for passwords
// (as ServerUsers), for a nats-server started from a configuration file.
// Passwords are written as given: pass "$NATS_PASSWORD_<PROCESS>" to have the
// server read them from its environment instead.
func AuthorizationConf(passwords map[string]string) (string, error) {
	users, err := ServerUsers(passwords)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("authorization {\n  users: [\n")
	for _, u := range users {
		pw := u.Password
		if !strings.HasPrefix(pw, "$") {
			pw = fmt.Sprintf("%q", pw)
		}
		fmt.Fprintf(&b, "    { user: %q, password: %s, permissions: { publish: { allow: [", u.Username, pw)
		for i, s := range u.Permissions.Publish.Allow {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%q", s)
		}
		b.WriteString("] } } }\n")
	}
	b.WriteString("  ]\n}\n")
	return b.String(), nil
}

// ConnFlags registers the NATS connection flags (--nats-url and the TLS and
// credential settings) on fs, the same on every service and the gateway.
func ConnFlags(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.URL, "nats-url", "nats://127.0.0.1:4222", "NATS server URLs, comma separated (tls://… or nats://… with --nats-tls-ca)")
	fs.StringVar(&c.CredsFile, "nats-creds", "", "NATS NKey/JWT credentials file")
	fs.StringVar(&c.User, "nats-user", "", "NATS user (the process's own: its service name, or gateway)")
	fs.StringVar(&c.Password, "nats-password", "", "NATS user's password (prefer the environment variable CLINICCHAT_NATS_PASSWORD)")
	fs.StringVar(&c.NKeySeedFile, "nats-nkey-seed-file", "", "NATS NKey seed file (instead of a user and password)")
	fs.StringVar(&c.TLSCA, "nats-tls-ca", "", "CA bundle for the NATS servers' certificates (turns TLS on)")
	fs.StringVar(&c.TLSCert, "nats-tls-cert", "", "client certificate for NATS (mutual TLS)")
	fs.StringVar(&c.TLSKey, "nats-tls-key", "", "client key for NATS (mutual TLS)")
}

// Validate reports every problem of the connection settings at once.
func (c Config) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("--nats-url is required"))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("--nats-tls-cert and --nats-tls-key go together"))
	}
	if c.Password != "" && c.User == "" {
		errs = append(errs, errors.New("--nats-password needs --nats-user"))
	}
	n := 0
	for _, set := range []bool{c.User != "", c.CredsFile != "", c.NKeySeedFile != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		errs = append(errs, errors.New("use one of --nats-user, --nats-creds and --nats-nkey-seed-file"))
	}
	return errors.Join(errs...)
}
