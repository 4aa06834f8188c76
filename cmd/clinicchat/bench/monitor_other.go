//go:build !unix

package bench

// SteadyMonitor is the unix build's (monitor_unix.go); elsewhere the bench
// runs with Go's default system monitor.
func SteadyMonitor() error { return nil }
