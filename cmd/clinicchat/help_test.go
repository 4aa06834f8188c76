package main_test

import (
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
)

// --help prints the usage and every flag, and exits 0; an unknown flag exits 1.
func TestHelp(t *testing.T) {
	bin := build(t)
	for _, arg := range []string{"--help", "-h"} {
		out, err := exec.Command(bin, arg).CombinedOutput()
		require.NoError(t, err, "%s exits 0: %s", arg, out)
		require.Contains(t, string(out), "Usage: clinicchat [flags]")
		require.Contains(t, string(out), "-http-addr")
	}
	err := exec.Command(bin, "--no-such-flag").Run()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	require.Equal(t, 1, exit.ExitCode())
}
