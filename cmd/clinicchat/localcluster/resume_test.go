package localcluster_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/internal/e2e"
	"github.com/clinicchat/clinicchat/cmd/clinicchat/localcluster"
)

// eventsResumeAcrossGateways (a part of TestDistributedStack, which runs
// two gateways): a patient's stream resumes after its Last-Event-ID on the
// other gateway, and on a gateway restarted after the events, with every
// message sent while it was away exactly once and in order, then live ones.
func eventsResumeAcrossGateways(t *testing.T, c *localcluster.Cluster) {
	require.Len(t, c.GatewayHTTPAddrs, 2)
	on := func(i int) e2e.Env {
		e := env(c)
		e.Base = "http://" + c.GatewayHTTPAddrs[i]
		return e
	}
	staff1, staff2 := on(0).As(t, "dr-lee", "dentist"), on(1).As(t, "dr-lee", "dentist")
	alice1, alice2 := on(0).As(t, "alice", "patient"), on(1).As(t, "alice", "patient")
	conv := staff1.StartConversation("alice").Name
	n := 0
	send := func(staff *e2e.Client) string {
		t.Helper()
		n++
		m := staff.Send(conv, fmt.Sprintf("resume %d", n), e2e.ReqID("resume", n))
		require.NotEmpty(t, m.Name)
		return m.Name
	}
	// expect reads the stream's next messages of the thread: want, in order.
	expect := func(s *e2e.Stream, want ...string) e2e.Event {
		t.Helper()
		var last e2e.Event
		for _, w := range want {
			for {
				ev := s.Next(t, "message.created")
				name := ev.Message(t).Name
				if !strings.HasPrefix(name, conv+"/") {
					continue // another thread's
				}
				require.Equal(t, w, name, "the resumed stream's messages, in order, each once")
				require.NotEmpty(t, ev.ID, "a message.created event without an id")
				last = ev
				break
			}
		}
		return last
	}

	// On gateway 1: the cursor of a message the patient saw.
	s := alice1.Events()
	seen := expect(s, send(staff1))
	s.Close()

	// Away: three more. Back on gateway 2, after the cursor: those three,
	// not the one already seen, then a live one.
	away := []string{send(staff1), send(staff1), send(staff2)}
	s = alice2.EventsAfter(seen.ID)
	expect(s, away...)
	seen = expect(s, send(staff2))
	s.Close()

	// Two more, then gateway 1 restarts: a gateway started after the events
	// resumes after the cursor as well.
	away = []string{send(staff2), send(staff2)}
	require.NoError(t, c.Restart(t.Context(), "gateway"))
	s = alice1.EventsAfter(seen.ID)
	expect(s, away...)
	expect(s, send(staff1))
}
