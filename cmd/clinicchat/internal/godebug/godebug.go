// Package godebug holds the GODEBUG setting the clinicchat processes run
// with where the runtime cannot be told in code: Steady, and With, which adds
// a setting to an environment.
package godebug

import "strings"

// Steady is the GODEBUG setting every Go process of the distributed stack
// runs with (deploy/local/up and deploy/k8s), and the bench client: a
// scheduler trace every 24.8 days, the longest period GODEBUG takes (a
// "SCHED" line to stderr once the machine has been up that long, the
// runtime's clock counting from boot, and every 24.8 days after; and the
// scheduler's state should the process crash), which keeps the runtime's
// system monitor out of its deep sleep. Without it, a process whose every P is idle (a service
// between two messages) parks the monitor, its next system call wakes it
// with a futex, and it polls every 20 µs for the next millisecond and more,
// 50 sleeps and more, before it backs off: in the distributed stack at 8
// senders, ~16 nanosleep calls a message over the processes and most of
// their voluntary context switches (Go issue 18236). With it the monitor
// never parks: it polls at up to 10 ms, about 100 wake-ups a second per idle
// process. Measured on the 2-CPU VM (BENCHMARKS.md, Dec 4 sixth session):
// 8 HTTP senders 470 → 721 sends/s and 32 senders 768 → 1,128 (medians of
// interleaved runs), the stack's voluntary context switches ~24 → ~6 a
// message; the idle stack's CPU 1.1 → 3.2–3.8 % of one core. The all-in-one,
// one process that is rarely idle under load, gains nothing measurable and
// runs without it.
const Steady = "schedtrace=2147483647"

// With returns env with exactly one GODEBUG: the last one env sets (the one
// os/exec passes on), with setting ("name=value") added unless it already
// sets that name. One entry, because a process started by a bare execve
// sees the first of several and os/exec passes on the last.
func With(env []string, setting string) []string {
	name, _, _ := strings.Cut(setting, "=")
	v, found := "", false
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if rest, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			v, found = rest, true
			continue
		}
		out = append(out, kv)
	}
	switch {
	case found && Sets(v, name):
	case v == "":
		v = setting
	default:
		v += "," + setting
	}
	return append(out, "GODEBUG="+v)
}

// Sets reports whether the GODEBUG value v sets name.
func Sets(v, name string) bool {
	for _, s := range strings.Split(v, ",") {
		if n, _, _ := strings.Cut(s, "="); n == name {
			return true
		}
	}
	return false
}
