package conversation

import (
	"flag"
	"io"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/svcmain"
)

// --notification-requests is on unless turned off, by flag or, as in a
// Kubernetes manifest, by CLINICCHAT_NOTIFICATION_REQUESTS; a value that is
// not a boolean is refused.
func TestNotificationRequestsFlag(t *testing.T) {
	parse := func(args ...string) (Config, error) {
		var c Config
		fs := flag.NewFlagSet("conversation", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		c.Flags(fs)
		err := svcmain.Parse(fs, args)
		return c, err
	}
	c, err := parse()
	require.NoError(t, err)
	require.False(t, c.NoNotificationRequests, "published by default")
	c, err = parse("--notification-requests=false")
	require.NoError(t, err)
	require.True(t, c.NoNotificationRequests)
	c, err = parse("--notification-requests")
	require.NoError(t, err)
	require.False(t, c.NoNotificationRequests)
	_, err = parse("--notification-requests=maybe")
	require.Error(t, err)

	t.Setenv("CLINICCHAT_NOTIFICATION_REQUESTS", "false")
	c, err = parse()
	require.NoError(t, err)
	require.True(t, c.NoNotificationRequests)
	c, err = parse("--notification-requests=true")
	require.NoError(t, err)
	require.False(t, c.NoNotificationRequests, "the flag wins over the environment")
}
