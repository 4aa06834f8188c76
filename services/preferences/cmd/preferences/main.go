// Command preferences runs the preferences service on its own: the patient
// directory and communication preferences over gRPC, configured by flags or
// CLINICCHAT_* environment variables (see svcmain.Common).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/clinicchat/clinicchat/services/platform/svcmain"
	"github.com/clinicchat/clinicchat/services/preferences"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "preferences:", err)
		os.Exit(1)
	}
}

// run runs the binary with args (after the program name); the migrate
// subcommand reports to stdout.
func run(args []string, stdout io.Writer) error {
	migrate, args := svcmain.MigrateCommand(args)
	common := svcmain.Common{NeedsDatabase: true}
	var cfg preferences.Config
	fs := flag.NewFlagSet("preferences", flag.ContinueOnError)
	common.Flags(fs)
	cfg.Flags(fs)
	if err := svcmain.Parse(fs, args); err != nil {
		return err
	}
	if migrate {
		return svcmain.RunMigrate("preferences", common.DatabaseDSN, stdout, preferences.Migrate)
	}
	return svcmain.Main("preferences", &common, func(ctx context.Context, rt *svcmain.Runtime) (svcmain.Service, error) {
		cfg.DatabaseDSN = rt.Common.DatabaseDSN
		svc, err := preferences.New(ctx, cfg, preferences.Deps{Log: rt.Log, JS: rt.JS})
		if err != nil {
			return nil, err
		}
		svc.Register(rt.Server.Server)
		return svc, nil
	})
}
