// Command delivery runs the delivery service on its own.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"google.golang.org/grpc"

	"github.com/clinicchat/clinicchat/services/delivery"
	"github.com/clinicchat/clinicchat/services/delivery/internal/adapters"
	"github.com/clinicchat/clinicchat/services/platform/svcmain"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "delivery:", err)
		os.Exit(1)
	}
}

// run runs the binary with args (after the program name); the migrate
// subcommand reports to stdout.
func run(args []string, stdout io.Writer) error {
	migrate, args := svcmain.MigrateCommand(args)
	var common svcmain.Common
	var cfg delivery.Config
	fs := flag.NewFlagSet("delivery", flag.ContinueOnError)
	common.Flags(fs)
	cfg.Flags(fs)
	if err := svcmain.Parse(fs, args); err != nil {
		return err
	}
	if migrate {
		return svcmain.RunMigrate("delivery", common.DatabaseDSN, stdout, delivery.Migrate)
	}
	common.NeedsDatabase = true
	return svcmain.Main("delivery", &common, func(ctx context.Context, rt *svcmain.Runtime) (svcmain.Service, error) {
		deps := delivery.Deps{Log: rt.Log, JS: rt.JS}
		for _, peer := range []struct {
			addr string
			conn *grpc.ClientConnInterface
		}{
			{cfg.ConversationAddr, &deps.Conversations},
			{cfg.PreferencesAddr, &deps.Preferences},
			{cfg.AttachmentAddr, &deps.Attachments},
		} {
			if peer.addr == "" {
				continue
			}
			conn, err := rt.Dial(peer.addr)
			if err != nil {
				return nil, err
			}
			*peer.conn = conn
		}
		if deps.Preferences != nil {
			// GetPatient answers kept for the preferences service's read
			// lease: per send, no call to it in the common case, and never a
			// stale opt-out (adapters.LeasedPreferences).
			deps.Preferences = &adapters.LeasedPreferences{ClientConnInterface: deps.Preferences}
		}
		if cfg.ArtifactProvider.Addr != "" {
			// TLS and the service's own credential; never the user's token.
			conn, err := delivery.DialArtifactProvider(ctx, cfg.ArtifactProvider)
			if err != nil {
				return nil, err
			}
			deps.Artifacts = conn
		}
		cfg.DatabaseDSN = common.DatabaseDSN
		svc, err := delivery.New(ctx, cfg, deps)
		if err != nil {
			return nil, err
		}
		svc.Register(rt.Server.Server)
		return svc, nil
	})
}
