// Command conversation runs the conversation service on its own.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/clinicchat/clinicchat/services/conversation"
	"github.com/clinicchat/clinicchat/services/platform/svcmain"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "conversation:", err)
		os.Exit(1)
	}
}

// run runs the binary with args (after the program name); the migrate
// subcommand reports to stdout.
func run(args []string, stdout io.Writer) error {
	migrate, args := svcmain.MigrateCommand(args)
	var common svcmain.Common
	var cfg conversation.Config
	fs := flag.NewFlagSet("conversation", flag.ContinueOnError)
	common.Flags(fs)
	cfg.Flags(fs)
	if err := svcmain.Parse(fs, args); err != nil {
		return err
	}
	if migrate {
		return svcmain.RunMigrate("conversation", common.DatabaseDSN, stdout, conversation.Migrate)
	}
	common.NeedsDatabase = true
	return svcmain.Main("conversation", &common, func(ctx context.Context, rt *svcmain.Runtime) (svcmain.Service, error) {
		prefs, err := rt.Dial(cfg.PreferencesAddr)
		if err != nil {
			return nil, err
		}
		cfg.DatabaseDSN = common.DatabaseDSN
		svc, err := conversation.New(ctx, cfg, conversation.Deps{Log: rt.Log, JS: rt.JS, Preferences: prefs})
		if err != nil {
			return nil, err
		}
		svc.Register(rt.Server.Server)
		return svc, nil
	})
}
