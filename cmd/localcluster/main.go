// Command localcluster runs clinicchat's production shape on one machine —
// every service, the gateway and the demo ArtifactProvider as separate
// processes, on PostgreSQL and NATS — until Ctrl-C or SIGTERM. Run it as
// deploy/local/up (see README.md). Every flag can also be set as
// CLINICCHAT_LOCAL_<FLAG> (dashes as underscores).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/localcluster"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func run() error {
	var cfg localcluster.Config
	fs := flag.NewFlagSet("deploy/local/up", flag.ContinueOnError)
	cfg.Flags(fs)
	var errs []string
	fs.VisitAll(func(f *flag.Flag) {
		if v, ok := os.LookupEnv("CLINICCHAT_LOCAL_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, err.Error())
			}
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("environment: %s", strings.Join(errs, "; "))
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	c, err := localcluster.Start(ctx, cfg, os.Stderr)
	if err != nil {
		return err
	}
	fmt.Printf(`
clinicchat local cluster is up (%s mode)
  HTTP API and web client  http://%s
  public gRPC edge         %s   (every public service, health, reflection; bearer token in "authorization")
  services                 %s
  logs                     %s/logs/<process>.log
`, map[bool]string{true: "dev", false: "production"}[cfg.Dev], c.HTTPAddr, c.GRPCAddr, c.Summary(), cfg.DataDir)
	if cfg.Dev {
		fmt.Printf(`  dev tokens               curl -s -X POST http://%s/v1/dev/tokens -H 'Content-Type: application/json' -d '{"subject":"dr-lee","role":"dentist","practice":"demo"}'
`, c.HTTPAddr)
	}
	fmt.Println("Ctrl-C stops everything.")

	select {
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr, "stopping…")
	case <-c.Done():
		fmt.Fprintln(os.Stderr, "stopping:", c.Err())
	}
	if err := c.Stop(); err != nil {
		return err
	}
	select {
	case <-c.Done():
		return c.Err()
	default:
		return nil
	}
}
