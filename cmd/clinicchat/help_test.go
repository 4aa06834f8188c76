package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

// --help prints the usage and every flag and returns no error (main exits
// 0); an unknown flag is an error (main exits 1).
func TestHelp(t *testing.T) {
	for _, arg := range []string{"--help", "-h"} {
		var out bytes.Buffer
		require.NoError(t, run([]string{arg}, &out), arg)
		require.Contains(t, out.String(), "Usage: clinicchat [flags]")
		require.Contains(t, out.String(), "-http-addr")
	}
	var out bytes.Buffer
	require.Error(t, run([]string{"--no-such-flag"}, &out))
	require.Contains(t, out.String(), "flag provided but not defined: -no-such-flag")
}
