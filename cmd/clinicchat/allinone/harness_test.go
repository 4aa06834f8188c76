package allinone_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/cmd/clinicchat/internal/e2e"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// start runs a real all-in-one on loopback ports in dir.
func start(t *testing.T, dir string) *allinone.Instance {
	t.Helper()
	return startWith(t, dir, nil)
}

// startWith is start with a configuration change.
func startWith(t *testing.T, dir string, change func(*allinone.Config)) *allinone.Instance {
	t.Helper()
	cfg := allinone.Config{HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", DataDir: dir, Dev: true,
		ArchiveAfter: 8760 * time.Hour, ArchiveSweepInterval: time.Hour, StepUpWindow: 5 * time.Minute, DrainTimeout: 5 * time.Second}
	if change != nil {
		change(&cfg)
	}
	in, err := allinone.Start(context.Background(), cfg, testkit.Logger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = in.Stop() })
	return in
}

// client speaks HTTP/JSON to one instance as one user.
type client struct {
	t     *testing.T
	base  string
	token string
}

func (in0 harness) as(subject, role string) *client {
	return in0.asIn(subject, role, allinone.DemoPractice, 0)
}

type harness struct {
	t  *testing.T
	in *allinone.Instance
}

func (h harness) asIn(subject, role, practice string, authAge time.Duration) *client {
	h.t.Helper()
	c := &client{t: h.t, base: "http://" + h.in.HTTPAddr}
	var out struct{ Token string }
	code := c.do("POST", "/v1/dev/tokens", map[string]any{"subject": subject, "role": role, "practice": practice,
		"authAgeSeconds": int(authAge.Seconds())}, &out)
	require.Equal(h.t, 200, code)
	require.NotEmpty(h.t, out.Token)
	c.token = out.Token
	return c
}

// do sends a JSON request and decodes the JSON answer into out (if not nil).
func (c *client) do(method, path string, body any, out any) int {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(c.t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	require.NoError(c.t, err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	if out != nil && len(raw) > 0 {
		require.NoError(c.t, json.Unmarshal(raw, out), "body: %s", raw)
	}
	return resp.StatusCode
}

// apiError is the google.rpc.Status body.
type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Details []struct {
		Type   string `json:"@type"`
		Reason string `json:"reason"`
		Domain string `json:"domain"`
	} `json:"details"`
}

func (e apiError) reason() string {
	for _, d := range e.Details {
		if d.Reason != "" {
			return d.Reason
		}
	}
	return ""
}

type message struct {
	Name       string `json:"name"`
	Sender     string `json:"sender"`
	SenderRole string `json:"senderRole"`
	Text       string `json:"text"`
	Sensitive  bool   `json:"sensitive"`
	Locked     bool   `json:"locked"`
	Status     string `json:"status"`
	RequestID  string `json:"requestId"`
	CreateTime string `json:"createTime"`
	ReadTime   string `json:"readTime"`
}

type conversation struct {
	Name               string `json:"name"`
	Patient            string `json:"patient"`
	PatientDisplayName string `json:"patientDisplayName"`
	State              string `json:"state"`
	LastMessagePreview string `json:"lastMessagePreview"`
	LastMessageTime    string `json:"lastMessageTime"`
	UnreadCount        int    `json:"unreadCount"`
	Pinned             bool   `json:"pinned"`
	Muted              bool   `json:"muted"`
}

func (c *client) startConversation(patient string) conversation {
	c.t.Helper()
	var conv conversation
	require.Equal(c.t, 200, c.do("POST", "/v1/conversations", map[string]any{"patient": "patients/" + patient}, &conv))
	return conv
}

func (c *client) send(conv, text, requestID string) message {
	c.t.Helper()
	var m message
	code := c.do("POST", "/v1/"+conv+"/messages", map[string]any{"text": text, "requestId": requestID}, &m)
	require.Equal(c.t, 200, code)
	return m
}

func (c *client) conversations(query string) []conversation {
	c.t.Helper()
	var out struct{ Conversations []conversation }
	require.Equal(c.t, 200, c.do("GET", "/v1/conversations"+query, nil, &out))
	return out.Conversations
}

// sse is a live /v1/events stream.
type sse struct {
	events chan sseEvent
	cancel context.CancelFunc
}

// sseEvent is one server-sent event (e2e.ReadEvents parses them).
type sseEvent = e2e.Event

// eventMessage decodes the event's message.
func eventMessage(t *testing.T, e sseEvent) message {
	var m message
	require.NoError(t, json.Unmarshal(e.Data["message"], &m))
	return m
}

// events opens /v1/events (after lastEventID if set); it returns once the
// response headers arrived, i.e. once the subscription is live.
func (c *client) events(lastEventID string) *sse {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/v1/events", nil)
	require.NoError(c.t, err)
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "text/event-stream")
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	require.Equal(c.t, 200, resp.StatusCode)
	require.Contains(c.t, resp.Header.Get("Content-Type"), "text/event-stream")
	s := &sse{events: make(chan sseEvent, 1024), cancel: cancel}
	go func() {
		defer resp.Body.Close()
		e2e.ReadEvents(resp.Body, s.events)
	}()
	c.t.Cleanup(cancel)
	return s
}

// next waits for the next event of one of types (others are skipped).
func (s *sse) next(t *testing.T, types ...string) sseEvent {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case ev, ok := <-s.events:
			require.True(t, ok, "stream ended")
			for _, ty := range types {
				if ev.Type == ty {
					return ev
				}
			}
		case <-timeout:
			t.Fatalf("no %v event within 15s", types)
		}
	}
}

func reqID(prefix string, i int) string {
	return fmt.Sprintf("%s-%d-%d", prefix, i, time.Now().UnixNano())
}
