package deploy_test

import (
	"flag"
	"strings"
	"time"

	"github.com/clinicchat/clinicchat/gateway"
	"github.com/clinicchat/clinicchat/services/attachment"
	"github.com/clinicchat/clinicchat/services/audit"
	"github.com/clinicchat/clinicchat/services/conversation"
	"github.com/clinicchat/clinicchat/services/delivery"
	"github.com/clinicchat/clinicchat/services/platform/svcmain"
	"github.com/clinicchat/clinicchat/services/preferences"
)

// The binaries the manifests run, by workload (Deployment) name.
var (
	grpcServices = []string{"conversation", "delivery", "attachment", "preferences", "audit"}
	workloads    = append([]string{"gateway"}, grpcServices...)
)

// binaryFlags registers, for each workload, the flags its binary has on top
// of svcmain.Common (the gateway binary does not use svcmain): the service
// packages' own Config.Flags, so a renamed, removed or retyped flag fails
// this test.
var binaryFlags = map[string]func(*flag.FlagSet){
	"conversation": func(fs *flag.FlagSet) { (&conversation.Config{}).Flags(fs) },
	"delivery":     func(fs *flag.FlagSet) { (&delivery.Config{}).Flags(fs) },
	"attachment":   func(fs *flag.FlagSet) { (&attachment.Config{}).Flags(fs) },
	"audit":        func(fs *flag.FlagSet) { (&audit.Config{}).Flags(fs) },
	"preferences":  func(fs *flag.FlagSet) { (&preferences.Config{}).Flags(fs) },
	// The gateway binary's own flags (gateway.BinaryConfig, which includes
	// the gateway package's Config). dev-signing-key-file is its dev mode
	// (HS256 tokens with a shared key), named like svcmain's flag so one
	// setting configures every binary in the dev overlay.
	"gateway": func(fs *flag.FlagSet) { (&gateway.BinaryConfig{}).Flags(fs) },
}

// optionalFlags may be left unset although their names end in -addr.
var optionalFlags = map[string]bool{
	"artifact-provider-addr": true, // empty: no practice system connected
	"debug-addr":             true, // operator-only pprof listener, off by default
	"grpc-health-addr":       true, // plaintext health for probes, with TLS only
	"metrics-addr":           true, // checked by checkMetricsPort
}

// flagsFor returns a fresh FlagSet with every flag the workload's binary
// registers.
func flagsFor(workload string) *flag.FlagSet {
	fs := flag.NewFlagSet(workload, flag.ContinueOnError)
	if workload != "gateway" {
		(&svcmain.Common{}).Flags(fs)
	}
	binaryFlags[workload](fs)
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
