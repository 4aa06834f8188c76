// Command audit runs the audit service on its own: durable JetStream
// consumers into the practice logs and the AuditService gRPC API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/clinicchat/clinicchat/services/audit"
	"github.com/clinicchat/clinicchat/services/platform/svcmain"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "audit:", err)
		os.Exit(1)
	}
}

// run runs the binary with args (after the program name); the migrate
// subcommand reports to stdout.
func run(args []string, stdout io.Writer) error {
	migrate, args := svcmain.MigrateCommand(args)
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	common := svcmain.Common{NeedsDatabase: true}
	common.Flags(fs)
	var cfg audit.Config
	cfg.Flags(fs)
	if err := svcmain.Parse(fs, args); err != nil {
		return err
	}
	if migrate {
		return svcmain.RunMigrate("audit", common.DatabaseDSN, stdout, audit.Migrate)
	}
	cfg.DatabaseDSN = common.DatabaseDSN
	own := cfg
	own.DatabaseDSN = "(checked by common)" // a missing DSN is reported once, by common
	if err := errors.Join(common.Validate(), own.Validate()); err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	// Dev mode (tokens signed with a local key rather than an issuer's JWKS):
	// generate the checkpoint key on first start. In production the key file
	// must exist.
	if common.DevSigningKey != "" && common.JWKSURL == "" {
		if err := audit.EnsureDevSignerKey(cfg.SignerKeyFile, audit.DefaultSignerName); err != nil {
			return err
		}
	}
	return svcmain.Main("audit", &common, func(ctx context.Context, rt *svcmain.Runtime) (svcmain.Service, error) {
		svc, err := audit.New(ctx, cfg, audit.Deps{Log: rt.Log, JS: rt.JS, Health: rt.Server.Health})
		if err != nil {
			return nil, err
		}
		svc.Register(rt.Server.Server)
		return svc, nil
	})
}
