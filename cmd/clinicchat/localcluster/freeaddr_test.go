package localcluster

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// A port is released before its process binds it, so the cluster must not
// hand the same one to two processes (CI, Dec 1: a process exited at
// start-up). 2,000 draws from the 12,000 ports below the ephemeral range
// repeat one almost surely (birthday bound) unless freeAddr remembers them.
func TestFreeAddrNeverRepeatsAPort(t *testing.T) {
	c := &Cluster{ports: map[string]bool{}}
	seen := map[string]bool{}
	for range 2000 {
		addr, err := c.freeAddr("127.0.0.1:0")
		require.NoError(t, err)
		require.False(t, seen[addr], "port handed out twice: %s", addr)
		seen[addr] = true
	}
}

// An unexpected exit's error carries the last lines of the process's log.
func TestTailIsTheLastLines(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.log")
	require.NoError(t, os.WriteFile(p, []byte("one\ntwo\nthree\nfour\n"), 0o600))
	require.Equal(t, "three\nfour", tail(p, 2))
	require.Equal(t, "one\ntwo\nthree\nfour", tail(p, 10))
	require.Contains(t, tail(filepath.Join(t.TempDir(), "none"), 2), "no such file")
}
