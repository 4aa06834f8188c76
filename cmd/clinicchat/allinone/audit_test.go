package allinone_test

import (
	"bytes"
	"encoding/json"
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

type auditEvent struct {
	Name      string `json:"name"`
	Index     int    `json:"index"`
	Actor     string `json:"actor"`
	ActorRole string `json:"actorRole"`
	Action    string `json:"action"`
	Resource  string `json:"resource"`
	Outcome   string `json:"outcome"`
	Detail    string `json:"detail"`
	Hash      string `json:"hash"`
}

func (c *client) auditEvents(filter string) []auditEvent {
	c.t.Helper()
	var all []auditEvent
	token := ""
	for {
		var page struct {
			AuditEvents   []auditEvent `json:"auditEvents"`
			NextPageToken string       `json:"nextPageToken"`
		}
		q := url.Values{"filter": {filter}, "pageSize": {"500"}, "pageToken": {token}}
		require.Equal(c.t, 200, c.do("GET", "/v1/auditEvents?"+q.Encode(), nil, &page))
		all = append(all, page.AuditEvents...)
		if token = page.NextPageToken; token == "" {
			return all
		}
	}
}

func (c *client) upload(conv, filename, contentType string, body []byte) (int, map[string]any) {
	c.t.Helper()
	q := url.Values{"conversation": {conv}, "filename": {filename}}
	req, err := http.NewRequest("POST", c.base+"/v1/attachments?"+q.Encode(), bytes.NewReader(body))
	require.NoError(c.t, err)
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func pngBytes(t *testing.T) []byte {
	var b bytes.Buffer
	require.NoError(t, png.Encode(&b, image.NewRGBA(image.Rect(0, 0, 4, 4))))
	return b.Bytes()
}

// A scripted session leaves exactly one audit event per action, with the
// right actor, resource and outcome, no message text anywhere, and a log
// that verifies.
func TestScriptedSessionIsAuditedExactlyOnce(t *testing.T) {
	h := harness{t: t, in: start(t, t.TempDir())}
	staff := h.as("dr-lee", "dentist")
	alice := h.as("alice", "patient")
	jose := h.as("jose", "patient")
	admin := h.as("adam", "practice_admin")
	const canary = "CANARY-7f3a9c sensitive diagnosis text"
	since := `time>="` + time.Now().UTC().Format(time.RFC3339Nano) + `"` // after the demo seed

	staffEvents := staff.events("")                                                // live pushes of list rows are not views
	conv := staff.startConversation("alice")                                       // conversation.create
	require.Equal(t, 200, staff.do("GET", "/v1/"+conv.Name, nil, &conversation{})) // conversation.view
	code, att := alice.upload(conv.Name, "xray.png", "image/png", pngBytes(t))     // attachment.upload
	require.Equal(t, 200, code, "%v", att)
	attName := att["name"].(string)
	var sent message
	require.Equal(t, 200, staff.do("POST", "/v1/"+conv.Name+"/messages", map[string]any{ // message.send
		"text": canary, "sensitive": true, "requestId": "audit-1"}, &sent))
	staffEvents.next(t, "conversation.updated")
	var list struct{ Messages []message }
	require.Equal(t, 200, alice.do("GET", "/v1/"+conv.Name+"/messages", nil, &list)) // message.list + message.unlock
	require.Len(t, list.Messages, 1)
	require.False(t, list.Messages[0].Locked, "a fresh sign-in sees the sensitive message")
	require.Equal(t, 200, alice.do("POST", "/v1/"+conv.Name+":markRead", map[string]any{}, nil)) // conversation.read
	req, _ := http.NewRequest("GET", staff.base+"/v1/"+attName+":download", nil)                 // attachment.download
	req.Header.Set("Authorization", "Bearer "+staff.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, 200, alice.do("PATCH", "/v1/patients/alice/communicationPreferences", map[string]any{"chatOptIn": false}, nil)) // preferences.update
	require.Equal(t, 200, staff.do("POST", "/v1/"+conv.Name+":pin", map[string]any{}, nil))                                          // conversation.pin
	require.Equal(t, 404, jose.do("GET", "/v1/"+conv.Name, nil, nil))                                                                // conversation.view DENIED

	type key struct{ actor, action, resource, outcome string }
	want := []key{
		{"users/dr-lee", "conversation.create", conv.Name, "ALLOWED"},
		{"users/dr-lee", "conversation.view", conv.Name, "ALLOWED"},
		{"patients/alice", "attachment.upload", attName, "ALLOWED"},
		{"users/dr-lee", "message.send", sent.Name, "ALLOWED"},
		{"patients/alice", "message.list", conv.Name, "ALLOWED"},
		{"patients/alice", "message.unlock", sent.Name, "ALLOWED"},
		{"patients/alice", "conversation.read", conv.Name, "ALLOWED"},
		{"users/dr-lee", "attachment.download", attName, "ALLOWED"},
		{"patients/alice", "preferences.update", "patients/alice/communicationPreferences", "ALLOWED"},
		{"users/dr-lee", "conversation.pin", conv.Name, "ALLOWED"},
		{"patients/jose", "conversation.view", conv.Name, "DENIED"},
	}
	var all []auditEvent
	count := func(k key) int {
		n := 0
		for _, e := range all {
			if e.Actor == k.actor && e.Action == k.action && e.Resource == k.resource && e.Outcome == k.outcome {
				n++
			}
		}
		return n
	}
	require.Eventually(t, func() bool {
		all = admin.auditEvents(since)
		for _, k := range want {
			if count(k) == 0 {
				return false
			}
		}
		return true
	}, 15*time.Second, 50*time.Millisecond, "every action reaches the audit log")
	for _, k := range want {
		require.Equal(t, 1, count(k), "%+v", k)
	}
	raw, err := json.Marshal(all)
	require.NoError(t, err)
	require.NotContains(t, string(raw), "CANARY", "no message text in the audit log")
	require.NotContains(t, string(raw), "xray.png", "no file names in the audit log")

	// Filters: a resource and everything under it; outcome; actor.
	for _, e := range admin.auditEvents(`resource="` + conv.Name + `"`) {
		require.True(t, e.Resource == conv.Name || strings.HasPrefix(e.Resource, conv.Name+"/"), e.Resource)
	}
	denied := admin.auditEvents(`outcome="DENIED" AND actor="patients/jose"`)
	require.Len(t, denied, 1)
	require.Equal(t, "conversation.view", denied[0].Action)

	// The NDJSON export: one AuditEvent per line, oldest first.
	req, _ = http.NewRequest("GET", admin.base+"/v1/auditEvents:export?filter="+url.QueryEscape(`actor="patients/jose" AND outcome="DENIED"`), nil)
	req.Header.Set("Authorization", "Bearer "+admin.token)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "application/x-ndjson", resp.Header.Get("Content-Type"))
	lines := strings.Split(strings.TrimSpace(string(body)), "\n")
	require.Len(t, lines, 1)
	var exported auditEvent
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &exported))
	require.Equal(t, "conversation.view", exported.Action)
	require.Equal(t, "DENIED", exported.Outcome)
	req, _ = http.NewRequest("GET", staff.base+"/v1/auditEvents:export", nil)
	req.Header.Set("Authorization", "Bearer "+staff.token)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 403, resp.StatusCode, "only a practice admin exports")

	// Only a practice admin reads the log.
	require.Equal(t, 403, staff.do("GET", "/v1/auditEvents", nil, nil))

	var verify struct {
		Valid    bool   `json:"valid"`
		Checked  int    `json:"checked"`
		TreeSize int    `json:"treeSize"`
		RootHash string `json:"rootHash"`
	}
	require.Equal(t, 200, admin.do("GET", "/v1/auditEvents:verify", nil, &verify))
	require.True(t, verify.Valid)
	require.Positive(t, verify.TreeSize, "sizes are JSON numbers")
	require.Equal(t, verify.TreeSize, verify.Checked)
	require.NotEmpty(t, verify.RootHash)
	var cp struct {
		TreeSize int    `json:"treeSize"`
		RootHash string `json:"rootHash"`
		Note     string `json:"note"`
	}
	require.Equal(t, 200, admin.do("GET", "/v1/auditEvents:checkpoint", nil, &cp))
	require.NotEmpty(t, cp.Note)
	require.Contains(t, cp.Note, cp.RootHash)
}
