// Command clinicchat runs the whole product in one process: every service,
// the gateway on --http-addr, the public gRPC API on --grpc-addr, an embedded
// NATS server with JetStream and embedded SQLite files in --data-dir, with a
// seeded demo practice in dev mode (the default).
//
// `clinicchat bench` is the load tool: it runs against any deployment in dev
// mode (see package bench).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/cmd/clinicchat/backup"
	"github.com/clinicchat/clinicchat/cmd/clinicchat/bench"
	"github.com/clinicchat/clinicchat/services/platform/svcmain"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "bench" {
		if err := bench.SteadyMonitor(); err != nil {
			fmt.Fprintln(os.Stderr, "clinicchat bench: runs with Go's default system monitor:", err)
		}
		if err := bench.Main(os.Args[2:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "clinicchat bench:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && (os.Args[1] == "backup" || os.Args[1] == "restore") {
		if err := backup.Main(os.Args[1], os.Args[2:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintf(os.Stderr, "clinicchat %s: %s\n", os.Args[1], err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "clinicchat:", err)
		os.Exit(1)
	}
}

// run parses args (usage and flag errors go to out) and runs until a
// signal; -h or --help prints the usage and returns nil.
func run(args []string, out io.Writer) error {
	var cfg allinone.Config
	fs := flag.NewFlagSet("clinicchat", flag.ContinueOnError)
	fs.SetOutput(out)
	cfg.Flags(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: clinicchat [flags]\n       clinicchat bench [flags]   (a load tool; see clinicchat bench --help)\n"+
			"       clinicchat backup --out FILE [flags]   (a consistent snapshot of the running instance)\n"+
			"       clinicchat restore --from FILE --data-dir DIR [flags]   (into a new data dir)\n\n"+
			"Runs clinicchat in one process (every service, the gateway and the web client,\n"+
			"embedded NATS and SQLite) with a seeded demo practice in dev mode.\n"+
			"Every flag can also be set as CLINICCHAT_<FLAG> (dashes as underscores).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := svcmain.Parse(fs, args); errors.Is(err, flag.ErrHelp) {
		return nil // -h or --help: the usage is printed
	} else if err != nil {
		return err
	}
	log, err := svcmain.NewLogger(cfg.LogLevel, "clinicchat")
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	log.Info("starting", zap.Stringer("config", &cfg))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Tracing (OTEL_* variables) before anything is built: off unless set.
	shutdownTracing, err := telemetry.Setup(ctx, "clinicchat")
	if err != nil {
		return err
	}
	defer svcmain.FlushTraces(log, shutdownTracing)
	in, err := allinone.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case <-in.Done():
		log.Error("a component stopped; shutting down")
	}
	if err := in.Stop(); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}
