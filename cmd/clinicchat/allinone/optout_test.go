package allinone_test

import (
	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/services/platform/ratelimit"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The product guide's troubleshooting rows on who can be chatted with.
func TestWhoCanBeChattedWith(t *testing.T) {
	h := harness{t: t, in: start(t, t.TempDir())}
	staff := h.as("fiona", "front_desk")
	var e apiError

	// "Patient doesn't appear in search: they have no portal account."
	var found struct {
		Patients []struct {
			Name             string `json:"name"`
			DisplayName      string `json:"displayName"`
			ChatEligible     bool   `json:"chatEligible"`
			IneligibleReason string `json:"ineligibleReason"`
		}
	}
	require.Equal(t, 200, staff.do("GET", "/v1/patients?query=david", nil, &found))
	require.Empty(t, found.Patients)
	require.Equal(t, 200, staff.do("GET", "/v1/patients?query=david&includeIneligible=true", nil, &found))
	require.Len(t, found.Patients, 1)
	require.False(t, found.Patients[0].ChatEligible)
	require.Equal(t, "NO_PORTAL_ACCOUNT", found.Patients[0].IneligibleReason)
	require.Equal(t, 400, staff.do("POST", "/v1/conversations", map[string]any{"patient": "patients/dave"}, &e))
	require.Equal(t, "NO_PORTAL_ACCOUNT", e.reason())

	var raw struct{ Patients []map[string]any }
	require.Equal(t, 200, staff.do("GET", "/v1/patients?query=alice", nil, &raw))
	require.Len(t, raw.Patients, 1)
	require.Equal(t, true, raw.Patients[0]["chatEligible"])
	require.NotContains(t, raw.Patients[0], "ineligibleReason", "an eligible patient has no reason")
	require.Equal(t, "1985-03-14", raw.Patients[0]["dateOfBirth"])

	// "Messages not delivering: patient opted out of chat."
	emma := h.as("emma", "patient")
	conv := staff.startConversation("emma")
	staff.send(conv.Name, "before opting out", reqID("b", 0))
	var prefs map[string]any
	require.Equal(t, 200, emma.do("PATCH", "/v1/patients/emma/communicationPreferences", map[string]any{"chatOptIn": false}, &prefs))
	require.Equal(t, 400, staff.do("POST", "/v1/"+conv.Name+"/messages", map[string]any{"text": "after", "requestId": "after-1"}, &e))
	require.Equal(t, "CHAT_OPTED_OUT", e.reason())
	require.Equal(t, 400, emma.do("POST", "/v1/"+conv.Name+"/messages", map[string]any{"text": "me too", "requestId": "e-1"}, &e))
	require.Equal(t, "CHAT_OPTED_OUT", e.reason(), "an opted-out patient cannot send either")
	require.Equal(t, 403, staff.do("PATCH", "/v1/patients/emma/communicationPreferences", map[string]any{"chatOptIn": true}, &e),
		"only the patient changes their preference")
	require.Equal(t, 200, staff.do("GET", "/v1/patients?query=emma&includeIneligible=true", nil, &found))
	require.Equal(t, "CHAT_OPTED_OUT", found.Patients[0].IneligibleReason)

	// Opting back in makes sending work again.
	require.Equal(t, 200, emma.do("PATCH", "/v1/patients/emma/communicationPreferences", map[string]any{"chatOptIn": true}, &prefs))
	staff.send(conv.Name, "welcome back", reqID("w", 0))
}

// Staff send continuously while the patient opts out: no send that starts
// after the opt-out's commit is accepted, and nothing is half-written.
func TestNoMessageAcceptedAfterOptOut(t *testing.T) {
	// As fast as the machine goes, from one identity: past any send limit.
	h := harness{t: t, in: startWith(t, t.TempDir(), func(c *allinone.Config) {
		c.Limits = ratelimit.Config{SendsPerSecond: 1e9, SendBurst: 1e9}
	})}
	staff := h.as("dr-lee", "dentist")
	jose := h.as("jose", "patient")
	conv := staff.startConversation("jose")

	type attempt struct {
		start    time.Time
		accepted bool
		reason   string
	}
	var mu sync.Mutex
	var attempts []attempt
	var optedOutAt time.Time
	stop := make(chan struct{})
	enough := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				begin := time.Now()
				var e apiError
				code := staff.do("POST", "/v1/"+conv.Name+"/messages", map[string]any{"text": "ping", "requestId": reqID("race", w*100000+i)}, &e)
				mu.Lock()
				attempts = append(attempts, attempt{start: begin, accepted: code == 200, reason: e.reason()})
				after := 0
				for _, a := range attempts {
					if !optedOutAt.IsZero() && a.start.After(optedOutAt) {
						after++
					}
				}
				if after >= 40 {
					select {
					case <-enough:
					default:
						close(enough)
					}
				}
				mu.Unlock()
			}
		}()
	}
	// Let some sends through, then opt out mid-stream.
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(attempts) >= 20
	}, 10*time.Second, time.Millisecond)
	var prefs map[string]any
	require.Equal(t, 200, jose.do("PATCH", "/v1/patients/jose/communicationPreferences", map[string]any{"chatOptIn": false}, &prefs))
	mu.Lock()
	optedOutAt = time.Now()
	mu.Unlock()
	<-enough
	close(stop)
	wg.Wait()

	accepted, after := 0, 0
	for _, a := range attempts {
		if a.accepted {
			accepted++
		}
		if a.start.After(optedOutAt) {
			after++
			require.False(t, a.accepted, "a send that started after the opt-out was accepted")
			require.Equal(t, "CHAT_OPTED_OUT", a.reason)
		}
	}
	require.GreaterOrEqual(t, after, 40)
	var list struct {
		Messages      []message
		NextPageToken string
	}
	require.Equal(t, 200, staff.do("GET", "/v1/"+conv.Name+"/messages?pageSize=200", nil, &list))
	require.Len(t, list.Messages, accepted, "every accepted send is stored, no refused one is")
}
