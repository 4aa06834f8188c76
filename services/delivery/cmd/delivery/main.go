// Command delivery runs the delivery service on its own.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"google.golang.org/grpc"

	"github.com/clinicchat/clinicchat/services/delivery"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/svcmain"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "delivery:", err)
		os.Exit(1)
	}
}

func run() error {
	migrate, args := svcmain.MigrateCommand(os.Args[1:])
	var common svcmain.Common
	var cfg delivery.Config
	fs := flag.NewFlagSet("delivery", flag.ContinueOnError)
	common.Flags(fs)
	cfg.Flags(fs)
	if err := svcmain.Parse(fs, args); err != nil {
		return err
	}
	if migrate {
		return svcmain.RunMigrate(common.DatabaseDSN, delivery.Migrate)
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
			{cfg.ArtifactProviderAddr, &deps.Artifacts},
		} {
			if peer.addr == "" {
				continue
			}
			conn, err := grpcx.Dial(peer.addr)
			if err != nil {
				return nil, err
			}
			*peer.conn = conn
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
