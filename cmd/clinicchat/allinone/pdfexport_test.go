package allinone_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// pdfText extracts a PDF's text with poppler's pdftotext; without it the test
// skips (fails under CI=true, where .ci/run installs poppler-utils).
func pdfText(t *testing.T, pdf []byte) string {
	t.Helper()
	bin, err := exec.LookPath("pdftotext")
	if err != nil {
		msg := fmt.Sprintf("the PDF export test needs pdftotext (apt-get install -y poppler-utils): %v", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	cmd := exec.Command(bin, "-layout", "-", "-")
	cmd.Stdin = bytes.NewReader(pdf)
	out, err := cmd.Output()
	require.NoError(t, err, "pdftotext reads the export")
	return string(out)
}

func (c *client) get(path string) (*http.Response, []byte) {
	c.t.Helper()
	req, err := http.NewRequest("GET", c.base+path, nil)
	require.NoError(c.t, err)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return resp, body
}

// Staff export a thread as a PDF for the patient's chart: the practice, the
// patient with their date of birth, and every message with its sender, time,
// status, attachments and artifact card, sensitive ones marked. Patients and
// other practices get none; exports and refusals are audited.
func TestConversationPDFExport(t *testing.T) {
	h := harness{t: t, in: start(t, t.TempDir())}
	lee := h.asNamed("dr-lee", "dentist", "Dr Grace Lee")
	admin := h.as("adam", "practice_admin")
	alice := h.as("alice", "patient")
	outsider := h.asIn("dr-who", "dentist", "other-practice", 0)
	since := `time>="` + time.Now().UTC().Format(time.RFC3339Nano) + `"`

	conv := lee.startConversation("alice")
	alice.send(conv.Name, "Can I move my appointment to Thursday?", reqID("pdf", 1))
	require.Equal(t, 200, lee.do("POST", "/v1/"+conv.Name+"/messages", map[string]any{
		"text": "Your biopsy result is benign", "sensitive": true, "requestId": reqID("pdf", 2)}, nil))
	code, att := lee.upload(conv.Name, "xray-left.png", "image/png", pngBytes(t))
	require.Equal(t, 200, code, "%v", att)
	require.Equal(t, 200, lee.do("POST", "/v1/"+conv.Name+"/messages", map[string]any{
		"text": "Here is the x-ray", "attachments": []string{att["name"].(string)}, "requestId": reqID("pdf", 3)}, nil))
	var artifacts struct {
		Artifacts []struct {
			Ref     string
			Preview struct{ Title string }
		}
	}
	require.Equal(t, 200, lee.do("GET", "/v1/patients/alice/artifacts?type=APPOINTMENT", nil, &artifacts))
	require.NotEmpty(t, artifacts.Artifacts, "the demo provider has appointments for alice")
	appt := artifacts.Artifacts[0]
	require.Equal(t, 200, lee.do("POST", "/v1/"+conv.Name+"/messages", map[string]any{
		"text": "Thursday it is", "artifact": map[string]any{"type": "APPOINTMENT", "ref": appt.Ref}, "requestId": reqID("pdf", 4)}, nil))

	resp, body := lee.get("/v1/" + conv.Name + ":export")
	require.Equal(t, 200, resp.StatusCode, "%s", body)
	require.Equal(t, "application/pdf", resp.Header.Get("Content-Type"))
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
	require.True(t, bytes.HasPrefix(body, []byte("%PDF-")), "a PDF")
	text := strings.Join(strings.Fields(pdfText(t, body)), " ")
	var pat struct{ DateOfBirth string }
	require.Equal(t, 200, lee.do("GET", "/v1/patients/alice", nil, &pat))
	require.NotEmpty(t, pat.DateOfBirth)
	for _, want := range []string{
		"Practice: demo", "Alice Johnson", "Date of birth: " + pat.DateOfBirth,
		"Can I move my appointment to Thursday?", "Alice Johnson (patient)",
		"Your biopsy result is benign", "[SENSITIVE]", "Dr Grace Lee (dentist)",
		"Here is the x-ray", "Attachment: xray-left.png (image/png,",
		"Thursday it is", "APPOINTMENT: " + appt.Preview.Title,
		"Messages: 4,",
	} {
		require.Contains(t, text, want)
	}
	require.Less(t, strings.Index(text, "Can I move"), strings.Index(text, "Thursday it is"), "oldest first")

	var e apiError
	require.Equal(t, 403, alice.do("GET", "/v1/"+conv.Name+":export", nil, &e), "patients get no export")
	require.Equal(t, 404, outsider.do("GET", "/v1/"+conv.Name+":export", nil, &e), "another practice's thread")

	type key struct{ actor, resource, outcome string }
	want := []key{
		{"users/dr-lee", conv.Name, "ALLOWED"},
		{"patients/alice", conv.Name, "DENIED"},
	}
	require.Eventually(t, func() bool {
		got := map[key]bool{}
		for _, ev := range admin.auditEvents(since + ` AND action="conversation.export"`) {
			got[key{ev.Actor, ev.Resource, ev.Outcome}] = true
		}
		return got[want[0]] && got[want[1]]
	}, 15*time.Second, 50*time.Millisecond, "exports and refused exports are audited")
}
