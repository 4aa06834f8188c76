package localcluster_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/localcluster"
)

// sseEvent is one Server-Sent Event of /v1/events.
type sseEvent struct{ id, typ, data string }

// sseStream reads a /v1/events response event by event.
type sseStream struct {
	cancel context.CancelFunc
	events chan sseEvent
}

// openSSE opens /v1/events on a gateway as token's user, resuming after
// lastEventID when it is not empty; the response must be 200.
func openSSE(t *testing.T, addr, token, lastEventID string) *sseStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/events", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "text/event-stream")
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("GET /v1/events on %s: %d %s", addr, resp.StatusCode, b)
	}
	s := &sseStream{cancel: cancel, events: make(chan sseEvent, 256)}
	go func() {
		defer close(s.events)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.typ != "" || ev.data != "" {
					select {
					case s.events <- ev:
					case <-ctx.Done():
						return
					}
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id:"):
				ev.id = strings.TrimSpace(strings.TrimPrefix(line, "id:"))
			case strings.HasPrefix(line, "event:"):
				ev.typ = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
			case strings.HasPrefix(line, "data:"):
				ev.data += strings.TrimSpace(strings.TrimPrefix(line, "data:"))
			}
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *sseStream) close() { s.cancel() }

// nextCreated is the stream's next message.created event of conversation
// conv, and the message's name; other events (receipts, conversation
// updates, keep-alives) are skipped.
func (s *sseStream) nextCreated(t *testing.T, conv string) (sseEvent, string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				t.Fatal("the event stream ended")
			}
			if ev.typ != "message.created" {
				continue
			}
			var body struct {
				Message struct{ Name string } `json:"message"`
			}
			require.NoError(t, json.Unmarshal([]byte(ev.data), &body), ev.data)
			if !strings.HasPrefix(body.Message.Name, conv+"/") {
				continue
			}
			require.NotEmpty(t, ev.id, "a message.created event without an id")
			return ev, body.Message.Name
		case <-deadline:
			t.Fatal("no message.created event within 30 s")
		}
	}
}

// eventsResumeAcrossGateways (a part of TestDistributedStack, which runs
// two gateways): a patient's stream resumes after its Last-Event-ID on the
// other gateway, and on a gateway restarted after the events, with every
// message sent while it was away exactly once and in order, then live ones.
func eventsResumeAcrossGateways(t *testing.T, c *localcluster.Cluster) {
	require.Len(t, c.GatewayHTTPAddrs, 2)
	gw1, gw2 := c.GatewayHTTPAddrs[0], c.GatewayHTTPAddrs[1]
	staff, err := c.DevIssuer.Issue("dr-lee", "dentist", "demo", "", 0)
	require.NoError(t, err)
	patient, err := c.DevIssuer.Issue("alice", "patient", "demo", "", 0)
	require.NoError(t, err)
	call := func(addr, method, path string, body, out any) {
		t.Helper()
		raw, err := json.Marshal(body)
		require.NoError(t, err)
		req, err := http.NewRequest(method, "http://"+addr+path, bytes.NewReader(raw))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+staff)
		req.Header.Set("Content-Type", "application/json")
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s %s: %s", method, path, b)
		require.NoError(t, json.Unmarshal(b, out))
	}
	var conv struct{ Name string }
	call(gw1, "POST", "/v1/conversations", map[string]any{"patient": "patients/alice"}, &conv)
	run := time.Now().UnixNano()
	n := 0
	send := func(addr string) string {
		t.Helper()
		n++
		var msg struct{ Name string }
		call(addr, "POST", "/v1/"+conv.Name+"/messages",
			map[string]any{"text": fmt.Sprintf("resume %d", n), "requestId": fmt.Sprintf("resume-%d-%d", run, n)}, &msg)
		require.NotEmpty(t, msg.Name)
		return msg.Name
	}
	// expect reads the stream's next messages of the thread: want, in order.
	expect := func(s *sseStream, want ...string) sseEvent {
		t.Helper()
		var last sseEvent
		for _, w := range want {
			ev, got := s.nextCreated(t, conv.Name)
			require.Equal(t, w, got, "the resumed stream's messages, in order, each once")
			last = ev
		}
		return last
	}

	// On gateway 1: the cursor of a message the patient saw.
	s := openSSE(t, gw1, patient, "")
	seen := expect(s, send(gw1))
	s.close()

	// Away: three more. Back on gateway 2, after the cursor: those three,
	// not the one already seen, then a live one.
	away := []string{send(gw1), send(gw1), send(gw2)}
	s = openSSE(t, gw2, patient, seen.id)
	expect(s, away...)
	seen = expect(s, send(gw2))
	s.close()

	// Two more, then gateway 1 restarts: a gateway started after the events
	// resumes after the cursor as well.
	away = []string{send(gw2), send(gw2)}
	require.NoError(t, c.Restart(context.Background(), "gateway"))
	s = openSSE(t, gw1, patient, seen.id)
	expect(s, away...)
	expect(s, send(gw1))
}
