package deploy_test

import (
	"flag"
	"strings"
	"time"

	"github.com/clinicchat/clinicchat/services/platform/svcmain"
)

// The binaries the manifests run, by workload (Deployment) name.
var (
	grpcServices = []string{"conversation", "delivery", "attachment", "preferences", "audit"}
	workloads    = append([]string{"gateway"}, grpcServices...)
)

// flagKind is how a flag's value parses, so the test can check each
// configured value the way the binary would.
type flagKind int

const (
	stringFlag flagKind = iota
	durationFlag
)

// serviceSpecificFlags are the flags each service registers on top of
// svcmain.Common.
//
// TODO(issue 6): replace this table by the services' own registrations once
// they exist — (&conversation.Config{}).Flags(fs), (&delivery.Config{}).Flags(fs),
// (&attachment.Config{}).Flags(fs), (&audit.Config{}).Flags(fs) and
// (&preferences.Config{}).Flags(fs) from github.com/clinicchat/clinicchat/services/<name> —
// so that a renamed or removed flag fails this test.
var serviceSpecificFlags = map[string]map[string]flagKind{
	"conversation": {
		"preferences-addr":       stringFlag,
		"delivery-addr":          stringFlag,
		"archive-after":          durationFlag,
		"archive-sweep-interval": durationFlag,
	},
	"delivery": {
		"conversation-addr":      stringFlag,
		"preferences-addr":       stringFlag,
		"attachment-addr":        stringFlag,
		"artifact-provider-addr": stringFlag,
		"step-up-window":         durationFlag,
	},
	"attachment": {
		"conversation-addr": stringFlag,
		"delivery-addr":     stringFlag,
		"blob-dir":          stringFlag,
	},
	"audit": {
		"checkpoint-signer-key-file": stringFlag,
		"checkpoint-interval":        durationFlag,
	},
	"preferences": {},
}

// gatewayFlags are the gateway binary's flags.
//
// TODO(issue 6): replace by the gateway's own registration
// ((&gateway.Config{}).Flags(fs) in github.com/clinicchat/clinicchat/gateway)
// once it exists. dev-signing-key-file is the gateway's dev mode (issue 2:
// HS256 tokens with a shared key), named like svcmain's flag so that one
// setting configures every binary in the dev overlay.
var gatewayFlags = map[string]flagKind{
	"http-addr":            stringFlag,
	"conversation-addr":    stringFlag,
	"delivery-addr":        stringFlag,
	"preferences-addr":     stringFlag,
	"attachment-addr":      stringFlag,
	"audit-addr":           stringFlag,
	"nats-url":             stringFlag,
	"nats-creds":           stringFlag,
	"nats-tls-ca":          stringFlag,
	"nats-tls-cert":        stringFlag,
	"nats-tls-key":         stringFlag,
	"jwks-url":             stringFlag,
	"jwt-issuer":           stringFlag,
	"jwt-audience":         stringFlag,
	"step-up-window":       durationFlag,
	"dev-signing-key-file": stringFlag,
}

// flagsFor returns a fresh FlagSet with every flag the workload's binary
// registers: the real svcmain.Common flags for the services plus their own.
func flagsFor(workload string) *flag.FlagSet {
	fs := flag.NewFlagSet(workload, flag.ContinueOnError)
	register := func(specific map[string]flagKind) {
		for name, kind := range specific {
			switch kind {
			case durationFlag:
				fs.Duration(name, 0, "")
			default:
				fs.String(name, "", "")
			}
		}
	}
	if workload == "gateway" {
		register(gatewayFlags)
		return fs
	}
	(&svcmain.Common{}).Flags(fs)
	register(serviceSpecificFlags[workload])
	return fs
}

// envName is the environment variable svcmain.Parse reads for a flag.
func envName(flagName string) string {
	return "CLINICCHAT_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// flagByEnv maps each CLINICCHAT_* variable of fs to its flag.
func flagByEnv(fs *flag.FlagSet) map[string]*flag.Flag {
	m := map[string]*flag.Flag{}
	fs.VisitAll(func(f *flag.Flag) { m[envName(f.Name)] = f })
	return m
}

// drainTimeout is the drain the binary applies on SIGTERM: its configured
// --drain-timeout, else the flag's default, else svcmain's default for a
// binary (the gateway) that has no such flag.
func drainTimeout(fs *flag.FlagSet, env map[string]envValue) time.Duration {
	if v, ok := env[envName("drain-timeout")]; ok && v.literal {
		if d, err := time.ParseDuration(v.value); err == nil {
			return d
		}
	}
	if f := fs.Lookup("drain-timeout"); f != nil {
		if d, err := time.ParseDuration(f.DefValue); err == nil {
			return d
		}
	}
	var c svcmain.Common
	probe := flag.NewFlagSet("", flag.ContinueOnError)
	c.Flags(probe)
	d, _ := time.ParseDuration(probe.Lookup("drain-timeout").DefValue)
	return d
}
