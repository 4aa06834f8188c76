package allinone

import (
	"os"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDataDirBelongsToOneProcess: while one process holds a data dir,
// another cannot take it (and so never starts its NATS server on the same
// store); the same process can take it again after letting it go.
func TestDataDirBelongsToOneProcess(t *testing.T) {
	if dir := os.Getenv("CLINICCHAT_LOCK_CHILD"); dir != "" {
		_, err := lockDataDir(dir)
		if err != nil {
			t.Log(err)
			os.Exit(3)
		}
		os.Exit(0)
	}
	dir := t.TempDir()
	child := func() int {
		cmd := exec.Command(os.Args[0], "-test.run=^TestDataDirBelongsToOneProcess$")
		cmd.Env = append(os.Environ(), "CLINICCHAT_LOCK_CHILD="+dir)
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		require.NoError(t, err)
		return 0
	}
	f, err := lockDataDir(dir)
	require.NoError(t, err)
	require.Equal(t, 3, child(), "a second process is refused while the first holds the data dir")
	require.NoError(t, f.Close())
	require.Equal(t, 0, child(), "free once the first lets it go")
	f, err = lockDataDir(dir)
	require.NoError(t, err, "taken again by the same process")
	require.NoError(t, f.Close())
}
