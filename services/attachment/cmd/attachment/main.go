// Command attachment runs the attachment service on its own.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"google.golang.org/grpc"

	"github.com/clinicchat/clinicchat/services/attachment"
	"github.com/clinicchat/clinicchat/services/platform/svcmain"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "attachment:", err)
		os.Exit(1)
	}
}

// run runs the binary with args (after the program name); the migrate
// and rewrap subcommands report to stdout.
func run(args []string, stdout io.Writer) error {
	migrate, args := svcmain.MigrateCommand(args)
	rewrap := len(args) > 0 && args[0] == "rewrap" // attachment rewrap --blob-dir=… --attachment-kek-file=…
	if rewrap {
		args = args[1:]
	}
	var common svcmain.Common
	var cfg attachment.Config
	fs := flag.NewFlagSet("attachment", flag.ContinueOnError)
	common.Flags(fs)
	cfg.Flags(fs)
	if err := svcmain.Parse(fs, args); err != nil {
		return err
	}
	if migrate {
		return svcmain.RunMigrate("attachment", common.DatabaseDSN, stdout, attachment.Migrate)
	}
	if rewrap {
		// KEK rotation: --attachment-kek-file is the new key, the old ones
		// in --attachment-previous-kek-files; only headers are rewritten.
		n, err := attachment.Rewrap(cfg.BlobDir, cfg.Encryption)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d blobs re-wrapped\n", n)
		return nil
	}
	common.NeedsDatabase = true
	cfg.DatabaseDSN = common.DatabaseDSN
	// Report every problem at once: the common flags' and ours (a missing
	// DSN is svcmain's to report).
	probe := cfg
	if probe.DatabaseDSN == "" {
		probe.DatabaseDSN = "unset"
	}
	if err := errors.Join(common.Validate(), probe.Validate()); err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	return svcmain.Main("attachment", &common, func(ctx context.Context, rt *svcmain.Runtime) (svcmain.Service, error) {
		deps := attachment.Deps{Log: rt.Log, JS: rt.JS}
		for _, peer := range []struct {
			addr string
			conn *grpc.ClientConnInterface
		}{
			{cfg.ConversationAddr, &deps.Conversations},
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
		svc, err := attachment.New(ctx, cfg, deps)
		if err != nil {
			return nil, err
		}
		svc.Register(rt.Server.Server)
		return svc, nil
	})
}
