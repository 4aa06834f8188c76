// Package e2e is the end-to-end suite both deployments pass through their
// HTTP gateway: the all-in-one (cmd/clinicchat/allinone) and the distributed
// stack (cmd/clinicchat/localcluster). It needs the seeded demo practice.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Env is a running deployment: its HTTP base URL and a token minter for the
// demo practice (authAge backdates the sign-in).
type Env struct {
	Base  string
	Token func(t *testing.T, subject, role string, authAge time.Duration) string
}

// Client speaks HTTP/JSON as one user.
type Client struct {
	t     *testing.T
	Base  string
	Token string
}

// As returns a client for subject.
func (e Env) As(t *testing.T, subject, role string) *Client {
	return &Client{t: t, Base: e.Base, Token: e.Token(t, subject, role, 0)}
}

// Do sends a JSON request and decodes the JSON answer into out (if not nil).
func (c *Client) Do(method, path string, body, out any) int {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(c.t, err)
		rd = bytes.NewReader(b)
	}
	code, raw := c.Raw(method, path, "application/json", rd)
	if out != nil && len(raw) > 0 {
		require.NoError(c.t, json.Unmarshal(raw, out), "body: %s", raw)
	}
	return code
}

// Try is Do without failing the test, for calls that may fail (and for
// goroutines): the status, or the transport error.
func (c *Client) Try(method, path string, body, out any) (int, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequest(method, c.Base+path, bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode == 200 && out != nil {
		err = json.Unmarshal(raw, out)
	}
	return resp.StatusCode, err
}

// Raw sends body as it is and returns the status and the body.
func (c *Client) Raw(method, path, contentType string, body io.Reader) (int, []byte) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.Base+path, body)
	require.NoError(c.t, err)
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return resp.StatusCode, raw
}

// Message and Conversation are the API's resources (the fields checked).
type Message struct {
	Name        string `json:"name"`
	Sender      string `json:"sender"`
	Text        string `json:"text"`
	Sensitive   bool   `json:"sensitive"`
	Locked      bool   `json:"locked"`
	Status      string `json:"status"`
	RequestID   string `json:"requestId"`
	Attachments []struct {
		Attachment string `json:"attachment"`
		Filename   string `json:"filename"`
	} `json:"attachments"`
}

type Conversation struct {
	Name               string `json:"name"`
	Patient            string `json:"patient"`
	State              string `json:"state"`
	LastMessagePreview string `json:"lastMessagePreview"`
	UnreadCount        int    `json:"unreadCount"`
	Pinned             bool   `json:"pinned"`
	Muted              bool   `json:"muted"`
}

// StartConversation finds or starts the patient's thread.
func (c *Client) StartConversation(patient string) Conversation {
	c.t.Helper()
	var conv Conversation
	require.Equal(c.t, 200, c.Do("POST", "/v1/conversations", map[string]any{"patient": "patients/" + patient}, &conv))
	return conv
}

// Send sends a text message.
func (c *Client) Send(conv, text, requestID string) Message {
	c.t.Helper()
	return c.SendBody(conv, map[string]any{"text": text, "requestId": requestID})
}

// SendBody sends a message with any fields.
func (c *Client) SendBody(conv string, body map[string]any) Message {
	c.t.Helper()
	var m Message
	require.Equal(c.t, 200, c.Do("POST", "/v1/"+conv+"/messages", body, &m))
	return m
}

// Conversations lists the caller's threads (query: "?archived=true", …).
func (c *Client) Conversations(query string) []Conversation {
	c.t.Helper()
	var out struct{ Conversations []Conversation }
	require.Equal(c.t, 200, c.Do("GET", "/v1/conversations"+query, nil, &out))
	return out.Conversations
}

// Messages lists every message of a thread, page by page.
func (c *Client) Messages(conv string) []Message {
	c.t.Helper()
	var all []Message
	token := ""
	for range 1000 {
		var page struct {
			Messages      []Message
			NextPageToken string
		}
		require.Equal(c.t, 200, c.Do("GET", "/v1/"+conv+"/messages?pageSize=200&pageToken="+url.QueryEscape(token), nil, &page))
		all = append(all, page.Messages...)
		if token = page.NextPageToken; token == "" {
			break
		}
	}
	return all
}

// Stream is a live /v1/events stream.
type Stream struct {
	events chan Event
	cancel context.CancelFunc
}

// Event is one server-sent event.
type Event struct {
	Type string
	ID   string
	Data map[string]json.RawMessage
}

// Message decodes the event's message.
func (e Event) Message(t *testing.T) Message {
	var m Message
	require.NoError(t, json.Unmarshal(e.Data["message"], &m))
	return m
}

// Events opens /v1/events; it returns once the subscription is live.
func (c *Client) Events() *Stream {
	c.t.Helper()
	return c.EventsAfter("")
}

// EventsAfter opens /v1/events resuming after lastEventID (a Last-Event-ID
// header; none when empty).
func (c *Client) EventsAfter(lastEventID string) *Stream {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", c.Base+"/v1/events", nil)
	require.NoError(c.t, err)
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	require.Equal(c.t, 200, resp.StatusCode)
	s := &Stream{events: make(chan Event, 1024), cancel: cancel}
	go func() {
		defer resp.Body.Close()
		ReadEvents(resp.Body, s.events)
	}()
	c.t.Cleanup(cancel)
	return s
}

// Close ends the stream (the client goes away).
func (s *Stream) Close() { s.cancel() }

// ReadEvents parses a text/event-stream body into out, one Event per
// dispatched block (id-only blocks and comments are skipped), and closes
// out when the body ends.
func ReadEvents(body io.Reader, out chan<- Event) {
	defer close(out)
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var ev Event
	var data strings.Builder
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.Type != "" {
				_ = json.Unmarshal([]byte(data.String()), &ev.Data)
				out <- ev
			}
			ev, data = Event{}, strings.Builder{}
		case strings.HasPrefix(line, "event:"):
			ev.Type = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "id:"):
			ev.ID = strings.TrimSpace(strings.TrimPrefix(line, "id:"))
		case strings.HasPrefix(line, "data:"):
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
}

// Next waits for the next event of one of types (others are skipped).
func (s *Stream) Next(t *testing.T, types ...string) Event {
	t.Helper()
	timeout := time.After(20 * time.Second)
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
			t.Fatalf("no %v event within 20s", types)
		}
	}
}

// WaitStatus waits for message.updated of name reaching status.
func (s *Stream) WaitStatus(t *testing.T, name, status string) Message {
	t.Helper()
	for {
		m := s.Next(t, "message.updated").Message(t)
		if m.Name == name && m.Status == status {
			return m
		}
	}
}

// ReqID is a request id unique to this run.
func ReqID(prefix string, i int) string {
	return fmt.Sprintf("%s-%d-%d", prefix, i, time.Now().UnixNano())
}

// Run runs the suite: every check as a subtest, in order.
func Run(t *testing.T, env Env) {
	t.Run("ReceiptsLiveBothWays", func(t *testing.T) { ReceiptsLiveBothWays(t, env) })
	t.Run("PinMuteSearch", func(t *testing.T) { PinMuteSearch(t, env) })
	t.Run("AttachmentUploadDownload", func(t *testing.T) { AttachmentUploadDownload(t, env) })
	t.Run("SensitiveLock", func(t *testing.T) { SensitiveLock(t, env) })
}

// ReceiptsLiveBothWays: a staff message reaches the patient's stream live,
// turns DELIVERED and, once read, READ on the sender's stream; the same the
// other way round.
func ReceiptsLiveBothWays(t *testing.T, env Env) {
	staff := env.As(t, "dr-lee", "dentist")
	colleague := env.As(t, "hana", "hygienist")
	alice := env.As(t, "alice", "patient")
	conv := staff.StartConversation("alice")
	staffEvents, aliceEvents := staff.Events(), alice.Events()

	sent := staff.Send(conv.Name, "Please confirm Tuesday 10:00", ReqID("r", 1))
	require.Equal(t, "SENT", sent.Status)
	for {
		if m := aliceEvents.Next(t, "message.created").Message(t); m.Name == sent.Name {
			require.Equal(t, "Please confirm Tuesday 10:00", m.Text)
			break
		}
	}
	staffEvents.WaitStatus(t, sent.Name, "DELIVERED")
	require.Equal(t, 200, alice.Do("POST", "/v1/"+conv.Name+":markRead", map[string]any{"upTo": sent.Name}, nil))
	staffEvents.WaitStatus(t, sent.Name, "READ")

	reply := alice.Send(conv.Name, "Confirmed, thank you", ReqID("a", 1))
	require.Equal(t, "patients/alice", reply.Sender)
	for staffEvents.Next(t, "message.created").Message(t).Name != reply.Name {
	}
	aliceEvents.WaitStatus(t, reply.Name, "DELIVERED")
	require.Equal(t, 200, colleague.Do("POST", "/v1/"+conv.Name+":markRead", map[string]any{"upTo": reply.Name}, nil))
	aliceEvents.WaitStatus(t, reply.Name, "READ")
	require.Eventually(t, func() bool {
		inbox := alice.Conversations("")
		return len(inbox) >= 1 && inbox[0].Name == conv.Name && inbox[0].LastMessagePreview == "Confirmed, thank you"
	}, 10*time.Second, 20*time.Millisecond, "the Inbox lists the thread with its newest message")
}

// PinMuteSearch: pin sorts a thread first for that staff member only, mute
// is per user, and the list searches by patient name.
func PinMuteSearch(t *testing.T, env Env) {
	staff := env.As(t, "sam", "assistant")
	other := env.As(t, "fiona", "front_desk")
	emma := staff.StartConversation("emma")
	jose := staff.StartConversation("jose")
	staff.Send(emma.Name, "older", ReqID("e", 1))
	staff.Send(jose.Name, "newer", ReqID("j", 1))
	first := func(c *Client) string {
		list := c.Conversations("")
		require.NotEmpty(t, list)
		return list[0].Name
	}
	// Both messages projected (jose, created last, is first before either
	// is), so that the order below is the messages' for everyone.
	require.Eventually(t, func() bool {
		list := staff.Conversations("")
		if len(list) == 0 || list[0].Name != jose.Name || list[0].LastMessagePreview != "newer" {
			return false
		}
		for _, c := range list {
			if c.Name == emma.Name {
				return c.LastMessagePreview == "older"
			}
		}
		return false
	}, 10*time.Second, 20*time.Millisecond, "newest first")

	var c Conversation
	require.Equal(t, 200, staff.Do("POST", "/v1/"+emma.Name+":pin", map[string]any{}, &c))
	require.True(t, c.Pinned)
	require.Eventually(t, func() bool { return first(staff) == emma.Name }, 10*time.Second, 20*time.Millisecond, "pinned first")
	if list := other.Conversations(""); len(list) > 0 && list[0].Name == emma.Name {
		// Say what the other staff member saw, to tell a shared pin from
		// an order problem.
		t.Fatalf("pins are per staff member: %s sees %s first: %+v", "fiona", emma.Name, list)
	}

	require.Equal(t, 200, staff.Do("POST", "/v1/"+jose.Name+":mute", map[string]any{}, &c))
	require.True(t, c.Muted)
	require.Equal(t, 200, other.Do("GET", "/v1/"+jose.Name, nil, &c))
	require.False(t, c.Muted, "mute is per staff member")
	require.Equal(t, 200, staff.Do("POST", "/v1/"+jose.Name+":unmute", map[string]any{}, &c))
	require.False(t, c.Muted)

	found := staff.Conversations("?query=" + url.QueryEscape("jose garcia"))
	require.Len(t, found, 1, "accent-insensitive search by patient name")
	require.Equal(t, jose.Name, found[0].Name)
	require.Equal(t, 200, staff.Do("POST", "/v1/"+emma.Name+":unpin", map[string]any{}, &c))
	require.False(t, c.Pinned)
}

// AttachmentUploadDownload: an image uploaded by staff is sent and the
// patient downloads the same bytes.
func AttachmentUploadDownload(t *testing.T, env Env) {
	staff := env.As(t, "dr-lee", "dentist")
	patient := env.As(t, "john-smith-1", "patient")
	conv := staff.StartConversation("john-smith-1")
	var img bytes.Buffer
	require.NoError(t, png.Encode(&img, image.NewRGBA(image.Rect(0, 0, 64, 64))))
	code, raw := staff.Raw("POST", "/v1/attachments?conversation="+url.QueryEscape(conv.Name)+"&filename=xray.png", "image/png", bytes.NewReader(img.Bytes()))
	require.Equal(t, 200, code, "%s", raw)
	var att struct {
		Name      string `json:"name"`
		SizeBytes int    `json:"sizeBytes"`
	}
	require.NoError(t, json.Unmarshal(raw, &att))
	require.Equal(t, img.Len(), att.SizeBytes)
	sent := staff.SendBody(conv.Name, map[string]any{"text": "Your x-ray", "attachments": []string{att.Name}, "requestId": ReqID("x", 1)})
	require.Len(t, sent.Attachments, 1)

	code, got := patient.Raw("GET", "/v1/"+att.Name+":download", "", nil)
	require.Equal(t, 200, code)
	require.Equal(t, img.Bytes(), got)
	stranger := env.As(t, "alice", "patient")
	code, _ = stranger.Raw("GET", "/v1/"+att.Name+":download", "", nil)
	require.Equal(t, 404, code, "another patient cannot")
}

// SensitiveLock: a sensitive message is locked for a patient who signed in
// long ago and open after a fresh sign-in.
func SensitiveLock(t *testing.T, env Env) {
	staff := env.As(t, "hana", "hygienist")
	conv := staff.StartConversation("john-smith-2")
	sent := staff.SendBody(conv.Name, map[string]any{"text": "Your biopsy result", "sensitive": true, "requestId": ReqID("s", 1)})
	require.True(t, sent.Sensitive)

	stale := &Client{t: t, Base: env.Base, Token: env.Token(t, "john-smith-2", "patient", time.Hour)}
	var m Message
	require.Equal(t, 200, stale.Do("GET", "/v1/"+sent.Name, nil, &m))
	require.True(t, m.Locked)
	require.Empty(t, m.Text)
	fresh := env.As(t, "john-smith-2", "patient")
	require.Equal(t, 200, fresh.Do("GET", "/v1/"+sent.Name, nil, &m))
	require.False(t, m.Locked)
	require.Equal(t, "Your biopsy result", m.Text)
}

// Archive: with a short --archive-after, an idle thread leaves the default
// list for archived=true, and a new message reactivates it.
func Archive(t *testing.T, env Env) {
	staff := env.As(t, "dr-lee", "dentist")
	conv := staff.StartConversation("emma")
	require.Eventually(t, func() bool {
		for _, c := range staff.Conversations("?archived=true") {
			if c.Name == conv.Name && c.State == "ARCHIVED" {
				return true
			}
		}
		return false
	}, 20*time.Second, 50*time.Millisecond)
	staff.Send(conv.Name, "a year later", ReqID("b", 0))
	require.Eventually(t, func() bool {
		for _, c := range staff.Conversations("") {
			if c.Name == conv.Name && c.State == "ACTIVE" {
				return true
			}
		}
		return false
	}, 20*time.Second, 20*time.Millisecond, "a new message reactivates the thread")
}
