//go:build unix

package bench

import (
	"os"
	"syscall"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/internal/godebug"
)

// SteadyMonitor replaces the process with itself run again with the stack's
// GODEBUG (godebug.Steady), unless GODEBUG already sets schedtrace
// (GODEBUG=schedtrace=0 keeps Go's default): on success it does not return.
// The client shares the machine with the server it measures, and its own
// goroutines wait on the network between sends as a service's do, so Go's
// system monitor parked and was woken again about every send: ~2 nanosleep
// calls a send, and at 8 HTTP senders against the distributed stack 633 →
// 774 sends/s (medians of 4 interleaved runs; BENCHMARKS.md, Dec 4 sixth
// session). The runtime reads GODEBUG only at start, hence the exec. `main`
// calls it for `clinicchat bench` only, never a test.
func SteadyMonitor() error {
	if godebug.Sets(os.Getenv("GODEBUG"), "schedtrace") {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	return syscall.Exec(exe, os.Args, godebug.With(os.Environ(), godebug.Steady))
}
