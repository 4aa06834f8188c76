package allinone_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Staff start a conversation and send; the patient's live stream gets it and
// their Inbox lists it. Another patient and another practice's staff get 404
// for the thread and see no event of it.
func TestStaffMessageReachesPatientLive(t *testing.T) {
	h := harness{t: t, in: start(t, t.TempDir())}
	staff := h.as("dr-lee", "dentist")
	alice := h.as("alice", "patient")
	jose := h.as("jose", "patient")
	outsider := h.asIn("dr-who", "dentist", "other-practice", 0)

	conv := staff.startConversation("alice")
	require.Equal(t, "patients/alice", conv.Patient)
	require.Equal(t, "Alice Johnson", conv.PatientDisplayName)
	require.Equal(t, "ACTIVE", conv.State)
	again := staff.startConversation("alice")
	require.Equal(t, conv.Name, again.Name, "find or start: one thread per patient")

	aliceEvents := alice.events("")
	joseEvents := jose.events("")
	outsiderEvents := outsider.events("")

	sent := staff.send(conv.Name, "Your crown is ready for fitting", reqID("s", 1))
	require.Equal(t, "SENT", sent.Status)
	require.Equal(t, "users/dr-lee", sent.Sender)

	ev := aliceEvents.next(t, "message.created")
	got := eventMessage(t, ev)
	require.Equal(t, sent.Name, got.Name)
	require.Equal(t, "Your crown is ready for fitting", got.Text)
	require.NotEmpty(t, ev.ID, "events carry a cursor")

	require.Eventually(t, func() bool {
		inbox := alice.conversations("")
		return len(inbox) == 1 && inbox[0].Name == conv.Name && inbox[0].LastMessagePreview == "Your crown is ready for fitting" &&
			inbox[0].UnreadCount == 1
	}, 5*time.Second, 20*time.Millisecond, "the Inbox lists the thread with its newest message")

	var e apiError
	require.Equal(t, 404, jose.do("GET", "/v1/"+conv.Name, nil, &e))
	require.Equal(t, "NOT_FOUND", e.reason())
	require.Equal(t, 404, outsider.do("GET", "/v1/"+conv.Name, nil, &e))
	require.Equal(t, 404, outsider.do("GET", "/v1/"+conv.Name+"/messages", nil, &e))
	require.Equal(t, 404, jose.do("POST", "/v1/"+conv.Name+"/messages", map[string]any{"text": "hi", "requestId": "x"}, &e))
	require.Empty(t, jose.conversations(""), "a patient lists only their own threads")
	require.Empty(t, outsider.conversations(""), "another practice starts empty")

	// Ordered streams: when jose's own message arrives first, alice's never came.
	joseConv := staff.startConversation("jose")
	marker := staff.send(joseConv.Name, "marker for jose", reqID("m", 1))
	require.Equal(t, marker.Name, eventMessage(t, joseEvents.next(t, "message.created")).Name)

	otherPMS := h.asIn("pms", "system", "other-practice", 0)
	var p map[string]any
	require.Equal(t, 200, otherPMS.do("POST", "/v1/patients", map[string]any{"patient": map[string]any{
		"name": "patients/zed", "externalId": "Z1", "displayName": "Zed Other", "dateOfBirth": "1990-01-01", "hasPortalAccount": true}}, &p))
	zed := h.asIn("zed", "patient", "other-practice", 0)
	require.Equal(t, 200, zed.do("PATCH", "/v1/patients/zed/communicationPreferences", map[string]any{"chatOptIn": true}, &p))
	zedConv := outsider.startConversation("zed")
	zedMsg := outsider.send(zedConv.Name, "marker for the other practice", reqID("z", 1))
	require.Equal(t, zedMsg.Name, eventMessage(t, outsiderEvents.next(t, "message.created")).Name)
}

// Twenty concurrent sends with one requestId store exactly one message.
func TestConcurrentRepeatsOfOneRequestCreateOneMessage(t *testing.T) {
	h := harness{t: t, in: start(t, t.TempDir())}
	staff := h.as("fiona", "front_desk")
	conv := staff.startConversation("emma")
	var wg sync.WaitGroup
	names := make([]string, 20)
	codes := make([]int, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var m message
			codes[i] = staff.do("POST", "/v1/"+conv.Name+"/messages", map[string]any{"text": "Reminder: cleaning tomorrow", "requestId": "one-request"}, &m)
			names[i] = m.Name
		}()
	}
	wg.Wait()
	for i := range 20 {
		require.Equal(t, 200, codes[i])
		require.Equal(t, names[0], names[i])
	}
	var list struct{ Messages []message }
	require.Equal(t, 200, staff.do("GET", "/v1/"+conv.Name+"/messages", nil, &list))
	require.Len(t, list.Messages, 1)

	var e apiError
	require.Equal(t, 400, staff.do("POST", "/v1/"+conv.Name+"/messages", map[string]any{"text": "different", "requestId": "one-request"}, &e))
	require.Equal(t, "REQUEST_ID_REUSED", e.reason())
}

// Refusals carry SPEC's reasons and store nothing.
func TestRefusalsCarryReasons(t *testing.T) {
	h := harness{t: t, in: start(t, t.TempDir())}
	staff := h.as("dr-lee", "dentist")
	var e apiError

	require.Equal(t, 400, staff.do("POST", "/v1/conversations", map[string]any{"patient": "patients/dave"}, &e))
	require.Equal(t, "NO_PORTAL_ACCOUNT", e.reason())
	require.Contains(t, e.Message, "SMS")

	carol := staff.startConversation("carol")
	require.Equal(t, 400, staff.do("POST", "/v1/"+carol.Name+"/messages", map[string]any{"text": "hello", "requestId": "r1"}, &e))
	require.Equal(t, "CHAT_OPTED_OUT", e.reason())
	require.Equal(t, "Patient has opted out of chat; offer SMS instead", e.Message)
	var list struct{ Messages []message }
	require.Equal(t, 200, staff.do("GET", "/v1/"+carol.Name+"/messages", nil, &list))
	require.Empty(t, list.Messages, "nothing half-written")

	alice := staff.startConversation("alice")
	require.Equal(t, 400, staff.do("POST", "/v1/"+alice.Name+"/messages", map[string]any{"text": "", "requestId": "r2"}, &e))
	require.Equal(t, "INVALID_ARGUMENT", e.reason())
	long := make([]byte, 10001)
	for i := range long {
		long[i] = 'a'
	}
	require.Equal(t, 400, staff.do("POST", "/v1/"+alice.Name+"/messages", map[string]any{"text": string(long), "requestId": "r3"}, &e))
	require.Equal(t, 200, staff.do("POST", "/v1/"+alice.Name+"/messages", map[string]any{"text": string(long[:10000]), "requestId": "r4"}, nil))
	require.Equal(t, 400, staff.do("POST", "/v1/"+alice.Name+"/messages", map[string]any{"text": "no request id"}, &e))

	anon := &client{t: t, base: staff.base}
	require.Equal(t, 401, anon.do("GET", "/v1/conversations", nil, &e))
	require.Equal(t, "UNAUTHENTICATED", e.reason())

	patient := h.as("alice", "patient")
	require.Equal(t, 403, patient.do("POST", "/v1/conversations", map[string]any{"patient": "patients/alice"}, &e))
}

// Stopping and starting on the same data dir loses nothing; the demo seed
// runs once, so a patient's later opt-out survives the restart.
func TestRestartKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	first := start(t, dir)
	h := harness{t: t, in: first}
	staff := h.as("dr-lee", "dentist")
	conv := staff.startConversation("emma")
	var sent []message
	for i := range 5 {
		sent = append(sent, staff.send(conv.Name, "message before restart", reqID("r", i)))
	}
	emma := h.as("emma", "patient")
	var p map[string]any
	require.Equal(t, 200, emma.do("PATCH", "/v1/patients/emma/communicationPreferences", map[string]any{"chatOptIn": false}, &p))
	require.NoError(t, first.Stop())

	h = harness{t: t, in: start(t, dir)}
	staff = h.as("dr-lee", "dentist")
	list := staff.conversations("")
	require.Len(t, list, 1)
	require.Equal(t, conv.Name, list[0].Name)
	var msgs struct{ Messages []message }
	require.Equal(t, 200, staff.do("GET", "/v1/"+conv.Name+"/messages", nil, &msgs))
	require.Len(t, msgs.Messages, 5)
	require.Equal(t, sent[4].Name, msgs.Messages[0].Name, "newest first")
	var prefs struct {
		ChatOptIn bool `json:"chatOptIn"`
	}
	require.Equal(t, 200, staff.do("GET", "/v1/patients/emma/communicationPreferences", nil, &prefs))
	require.False(t, prefs.ChatOptIn, "the opt-out survives the restart")
	// The same requestId after a restart still answers with the first message.
	var again message
	require.Equal(t, 200, staff.do("POST", "/v1/"+conv.Name+"/messages", map[string]any{"text": "message before restart", "requestId": sent[0].RequestID}, &again))
	require.Equal(t, sent[0].Name, again.Name)
}

// A JSON body is read whether it is declared application/json, text/plain
// (a browser fetch of a string) or not declared; a form is refused.
func TestJSONBodiesWithoutTheJSONContentType(t *testing.T) {
	h := harness{t: t, in: start(t, t.TempDir())}
	staff := h.as("dr-lee", "dentist")
	for ct, want := range map[string]int{"": 200, "text/plain;charset=UTF-8": 200, "application/json": 200, "application/x-www-form-urlencoded": 415} {
		req, err := http.NewRequest("POST", staff.base+"/v1/conversations", strings.NewReader(`{"patient":"patients/alice"}`))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+staff.token)
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, want, resp.StatusCode, ct)
	}
}
