//go:build unix

package bench_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/bench"
	"github.com/clinicchat/clinicchat/cmd/clinicchat/internal/godebug"
)

// monitorChild, set in a child's environment, makes the test binary act as
// `clinicchat bench` does at start (SteadyMonitor) and print the GODEBUG it
// then runs with, instead of running the tests.
const monitorChild = "CLINICCHAT_BENCH_MONITOR_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(monitorChild) == "1" {
		if err := bench.SteadyMonitor(); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Printf("GODEBUG=%q\n", os.Getenv("GODEBUG"))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// SteadyMonitor runs the process again with the stack's GODEBUG added to
// its own, once, and leaves a GODEBUG that sets schedtrace alone (the way
// to keep Go's default).
func TestSteadyMonitorRunsTheBenchAgainWithIt(t *testing.T) {
	var base []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			base = append(base, kv)
		}
	}
	for _, tc := range []struct{ env, want string }{
		{"", godebug.Steady},
		{"GODEBUG=gctrace=0", "gctrace=0," + godebug.Steady},
		{"GODEBUG=schedtrace=0", "schedtrace=0"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(append([]string(nil), base...), monitorChild+"=1")
		if tc.env != "" {
			cmd.Env = append(cmd.Env, tc.env)
		}
		out, err := cmd.Output()
		require.NoError(t, err, "%s", out)
		require.Equal(t, fmt.Sprintf("GODEBUG=%q\n", tc.want), string(out), tc.env)
	}
}
