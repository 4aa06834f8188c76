package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"sync"
	"syscall"
)

// ErrFailed is returned by Main when the run lost, duplicated or failed
// anything: the command then exits non-zero, so CI can run it as a check.
var ErrFailed = errors.New("the run lost, duplicated or failed messages")

// Main runs `clinicchat bench [flags]`.
func Main(args []string, stdout, stderr io.Writer) error {
	var cfg Config
	fs := flag.NewFlagSet("clinicchat bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.Flags(fs)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	quiet := fs.Bool("quiet", false, "no progress bar")
	cpuProfile := fs.String("cpuprofile", "", "write the bench client's own CPU profile to this file (go tool pprof FILE)")
	timeline := fs.String("timeline", "", "send mode: write every message's send time, send → ack and send → stream to this file as CSV (where the tail comes from)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: clinicchat bench [flags]")
		fmt.Fprintln(stderr, "\nLoad test against a running clinicchat in dev mode (the all-in-one or deploy/local/up).")
		fmt.Fprintln(stderr, "--mode read drives read receipts flat out instead: patients mark read one message further per call,")
		fmt.Fprintln(stderr, "the staff senders' own streams count the READ receipts (markRead → sender latency, lost, duplicated).")
		fmt.Fprintln(stderr, "Exits 1 when any message (or receipt) is lost or duplicated, or any call fails.")
		fmt.Fprintln(stderr, "--cpuprofile FILE profiles the client itself. On the server's own machine every ms of the client's CPU")
		fmt.Fprintln(stderr, "is the server's: GOMAXPROCS=1 clinicchat bench … spends about a sixth less (fewer scheduler wake-ups),")
		fmt.Fprintln(stderr, "at the price of the client's goroutines queueing for one core (measured in BENCHMARKS.md). Its garbage")
		fmt.Fprintln(stderr, "collector runs at GOGC=400 unless $GOGC is set. It runs itself again with GODEBUG=schedtrace=2147483647, as")
		fmt.Fprintln(stderr, "the distributed stack's processes do (Go's system monitor no longer parks and wakes about every send);")
		fmt.Fprintln(stderr, "GODEBUG=schedtrace=0 keeps Go's default.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice == 0 {
		*quiet = true // not a terminal: no progress bar
	}
	if !*quiet && !*asJSON {
		bar := &progressBar{w: stderr}
		var mu sync.Mutex
		cfg.Progress = func(sent, total int) { mu.Lock(); bar.update(sent, total); mu.Unlock() }
	}
	if os.Getenv("GOGC") == "" {
		// The client's live heap is a few MB (the run's message names and
		// latencies) while it allocates ~100 small objects per message in
		// the transports: at Go's default the collector ran every few
		// thousand messages, ~3% of the client's CPU, taken from the server
		// under test on a shared machine. $GOGC still wins.
		debug.SetGCPercent(400)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	res, err := Run(ctx, cfg)
	if err != nil {
		return err
	}
	if *timeline != "" {
		if err := writeTimeline(*timeline, res); err != nil {
			return err
		}
	}
	if *asJSON {
		if err := res.WriteJSON(stdout); err != nil {
			return err
		}
	} else {
		res.WriteText(stdout)
	}
	if res.Failed() {
		return ErrFailed
	}
	return nil
}

// writeTimeline writes res's timeline to the file at path.
func writeTimeline(path string, res *Result) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := res.WriteTimeline(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
