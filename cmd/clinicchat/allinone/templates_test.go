package allinone_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type messageTemplate struct {
	Name       string `json:"name"`
	Title      string `json:"title"`
	Text       string `json:"text"`
	UpdateTime string `json:"updateTime"`
}

// The admin writes reply templates, staff list them, nobody else does either;
// an unknown placeholder is refused by name; changes and refusals are audited.
func TestMessageTemplates(t *testing.T) {
	h := harness{t: t, in: start(t, t.TempDir())}
	admin := h.as("adam", "practice_admin")
	lee := h.as("dr-lee", "dentist")
	alice := h.as("alice", "patient")
	outsider := h.asIn("dr-who", "practice_admin", "other-practice", 0)
	since := `time>="` + time.Now().UTC().Format(time.RFC3339Nano) + `"`

	var tpl messageTemplate
	require.Equal(t, 200, admin.do("POST", "/v1/messageTemplates", map[string]any{"title": "Recall",
		"text": "Hi {patient.firstName}, it is time for your check-up at {practice.name}. {staff.displayName}"}, &tpl))
	require.Regexp(t, `^messageTemplates/[a-z0-9]+$`, tpl.Name)
	require.Equal(t, "Recall", tpl.Title)
	require.NotEmpty(t, tpl.UpdateTime)

	var e apiError
	require.Equal(t, 400, admin.do("POST", "/v1/messageTemplates", map[string]any{"title": "Bad", "text": "Dear {patient.lastName}"}, &e))
	require.Equal(t, "INVALID_ARGUMENT", e.reason())
	require.Contains(t, e.Message, "{patient.lastName}", "names the unknown placeholder")
	require.Equal(t, 400, admin.do("POST", "/v1/messageTemplates", map[string]any{"title": "Long", "text": strings.Repeat("a", 2001)}, &e))

	var list struct {
		MessageTemplates []messageTemplate `json:"messageTemplates"`
	}
	require.Equal(t, 200, lee.do("GET", "/v1/messageTemplates", nil, &list))
	require.Equal(t, []messageTemplate{tpl}, list.MessageTemplates, "staff use the practice's templates")
	require.Equal(t, 200, outsider.do("GET", "/v1/messageTemplates", nil, &list))
	require.Empty(t, list.MessageTemplates, "another practice has its own")

	require.Equal(t, 403, alice.do("GET", "/v1/messageTemplates", nil, &e))
	require.Equal(t, 403, lee.do("POST", "/v1/messageTemplates", map[string]any{"title": "Mine", "text": "x"}, &e))
	require.Equal(t, 403, lee.do("PATCH", "/v1/"+tpl.Name, map[string]any{"title": "Mine"}, &e))
	require.Equal(t, 403, lee.do("DELETE", "/v1/"+tpl.Name, nil, &e))
	require.Equal(t, 404, outsider.do("PATCH", "/v1/"+tpl.Name, map[string]any{"title": "Theirs"}, &e))

	var changed messageTemplate
	require.Equal(t, 200, admin.do("PATCH", "/v1/"+tpl.Name, map[string]any{"text": "See you soon, {patient.displayName}"}, &changed))
	require.Equal(t, "Recall", changed.Title, "only the fields sent change")
	require.Equal(t, "See you soon, {patient.displayName}", changed.Text)
	require.Equal(t, 400, admin.do("PATCH", "/v1/"+tpl.Name, map[string]any{"text": "{staff.firstName}"}, &e))
	require.Contains(t, e.Message, "{staff.firstName}")

	require.Equal(t, 200, admin.do("DELETE", "/v1/"+tpl.Name, nil, nil))
	require.Equal(t, 404, admin.do("DELETE", "/v1/"+tpl.Name, nil, &e))
	require.Equal(t, 200, lee.do("GET", "/v1/messageTemplates", nil, &list))
	require.Empty(t, list.MessageTemplates)

	type key struct{ actor, action, outcome string }
	want := []key{
		{"users/adam", "template.create", "ALLOWED"},
		{"users/adam", "template.update", "ALLOWED"},
		{"users/adam", "template.delete", "ALLOWED"},
		{"users/dr-lee", "template.create", "DENIED"},
		{"users/dr-lee", "template.update", "DENIED"},
		{"users/dr-lee", "template.delete", "DENIED"},
		{"patients/alice", "template.list", "DENIED"},
	}
	require.Eventually(t, func() bool {
		got := map[key]bool{}
		for _, ev := range admin.auditEvents(since) {
			got[key{ev.Actor, ev.Action, ev.Outcome}] = true
		}
		for _, k := range want {
			if !got[k] {
				return false
			}
		}
		return true
	}, 15*time.Second, 50*time.Millisecond, "template changes and refusals are audited")
}
