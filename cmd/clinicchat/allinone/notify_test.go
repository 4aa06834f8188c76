package allinone_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// Notification requests are for a notifier outside the process, which can
// subscribe only when the embedded NATS listens (--nats-listen): without it
// the all-in-one publishes none; with it, one per recipient as before.
func TestNotificationRequestsOnlyWhereANotifierCanConnect(t *testing.T) {
	for _, tc := range []struct {
		name   string
		listen bool
		want   int // notification requests of the three messages
	}{
		{"in-process NATS only", false, 0},
		{"--nats-listen", true, 3}, // alice; dr-lee; alice
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			in := startWith(t, dir, func(c *allinone.Config) {
				if tc.listen {
					c.NATSListen = freeLoopback(t)
				}
			})
			h := harness{t: t, in: in}
			staff := h.as("dr-lee", "dentist")
			alice := h.as("alice", "patient")
			conv := staff.startConversation("alice")
			staffEvents := staff.events("")
			staff.send(conv.Name, "Your crown is ready", reqID("n", 1))
			alice.send(conv.Name, "Thanks, when can I come?", reqID("n", 2))
			staff.send(conv.Name, "Tomorrow at 9", reqID("n", 3))
			for {
				var c conversation
				require.NoError(t, json.Unmarshal(staffEvents.next(t, "conversation.updated").Data["conversation"], &c))
				if c.LastMessagePreview == "Tomorrow at 9" {
					break
				}
			}
			require.NoError(t, in.Stop())

			// The relay publishes a thread's events in outbox order: message 3's
			// update is stored after messages 1 and 2's notification requests.
			updated, notified := subjectCounts(t, dir)
			require.GreaterOrEqual(t, updated, 3, "every message's thread update")
			require.Equal(t, tc.want, notified)
		})
	}
}

// subjectCounts opens the stopped instance's NATS store and counts the
// conversation stream's thread updates of new messages (their echo kind,
// conversation.activity) and notification requests (tenant form).
func subjectCounts(t *testing.T, dir string) (updated, notified int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, closeStore := openNATSStore(t, dir)
	defer closeStore()
	str, err := js.Stream(ctx, natsx.StreamOf(natsx.SubjectNotification))
	require.NoError(t, err)
	count := func(base string) int {
		info, err := str.Info(ctx, jetstream.WithSubjectFilter(base+".>"))
		require.NoError(t, err)
		n := 0
		for _, c := range info.State.Subjects {
			n += int(c)
		}
		return n
	}
	return count(natsx.SubjectConversationEcho), count(natsx.SubjectNotification)
}
