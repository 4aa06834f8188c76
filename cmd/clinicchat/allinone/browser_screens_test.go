package allinone_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
)

// Every role's screen in a real browser: the patient's Communication
// preferences, the practice admin's Audit log, and names on messages.
//
// CLINICCHAT_DOC_SCREENSHOTS=docs/screenshots (relative to the repository
// root) saves the README's full-page screenshots of the two screens.

// asNamed is a client whose token carries a name claim.
func (h harness) asNamed(subject, role, name string) *client {
	h.t.Helper()
	c := &client{t: h.t, base: "http://" + h.in.HTTPAddr}
	var out struct{ Token string }
	require.Equal(h.t, 200, c.do("POST", "/v1/dev/tokens", map[string]any{"subject": subject, "role": role,
		"practice": "demo", "name": name}, &out))
	c.token = out.Token
	return c
}

// docScreenshot saves a PNG of the tab, in a viewport height tall, for the
// README when CLINICCHAT_DOC_SCREENSHOTS names a directory.
func (tb *tab) docScreenshot(t *testing.T, name string, height int64) {
	t.Helper()
	dir := os.Getenv("CLINICCHAT_DOC_SCREENSHOTS")
	if dir == "" {
		return
	}
	if !filepath.IsAbs(dir) {
		dir = filepath.Join("..", "..", "..", dir) // from the package directory to the repository root
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	tb.do(t, chromedp.EmulateViewport(1280, height))
	img, err := chromedp.Run(tb.ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	tb.do(t, chromedp.EmulateReset())
	require.NoError(t, os.WriteFile(filepath.Join(dir, name+".png"), img, 0o644))
}

// downloadsTo makes the tab's downloads land in a new directory, named as
// the page names them.
func (tb *tab) downloadsTo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	enabled := true
	_, err := chromedp.CallBrowser(tb.ctx, cdpbrowser.SetDownloadBehavior, cdpbrowser.SetDownloadBehaviorParams{
		Behavior: cdpbrowser.SetDownloadBehaviorBehaviorAllow, BrowserContextID: chromedp.FromContext(tb.ctx).BrowserContextID,
		DownloadPath: dir, EventsEnabled: &enabled})
	require.NoError(t, err)
	return dir
}

// waitFile waits for a completed download whose name starts with prefix
// (Chromium writes to a .crdownload file and renames it when done).
func waitFile(t *testing.T, dir, prefix string) []byte {
	t.Helper()
	var body []byte
	require.Eventually(t, func() bool {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return false
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), prefix) && !strings.HasSuffix(e.Name(), ".crdownload") {
				body, err = os.ReadFile(filepath.Join(dir, e.Name()))
				return err == nil && len(body) > 0
			}
		}
		return false
	}, stepTimeout, 50*time.Millisecond, "a downloaded file %s*", prefix)
	return body
}

func TestBrowserScreens(t *testing.T) {
	chromiumPath(t) // skip before starting anything
	in := startWith(t, t.TempDir(), func(c *allinone.Config) { c.ArchiveAfter = 90 * 24 * time.Hour })
	h := harness{t: t, in: in}
	b := newBrowser(t, "http://"+in.HTTPAddr)
	drLee := b.tab(t, "dr-lee")
	alice := b.tab(t, "alice")
	admin := b.tab(t, "adam")
	hana := b.tab(t, "hana")
	var conv conversation

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{{"the page loads with no failed request", func(t *testing.T) {
		drLee.signIn(t, "staff:dr-lee", "demo")
		require.Empty(t, b.loggedErrors(), "failed requests on load")
		require.Empty(t, b.pageErrors())
	}}, {"a patient sees the sender's name; staff see which colleague wrote", func(t *testing.T) {
		conv = h.as("dr-lee", "dentist").startConversation("alice")
		drLee.wait(t, "Alice's thread", threadWith(conv.Name)+` != null`)
		drLee.do(t, chromedp.Click(chromedp.CSS(threadSel(conv.Name))), chromedp.WaitVisible(chromedp.CSS(".composer-input")),
			chromedp.SendKeys(chromedp.CSS(".composer-input"), "Your crown is ready\r"))
		drLee.wait(t, "the message sent", messageWithText("mine", "Your crown is ready")+`?.querySelector('.sender')?.textContent === 'You'`)
		h.asNamed("hana", "hygienist", "Hana Kim").send(conv.Name, "Remember to floss", reqID("screens-hana", 1))
		drLee.wait(t, "the colleague's name on her message", messageWithText("mine", "Remember to floss")+
			`?.querySelector('.sender')?.textContent === 'Hana Kim · Hygienist'`)

		alice.signIn(t, "patient:alice", "demo")
		alice.do(t, chromedp.Click(chromedp.CSS(threadSel(conv.Name))))
		alice.wait(t, "Dr. Lee's name and role on the message", messageWithText("theirs", "Your crown is ready")+
			`?.querySelector('.sender')?.textContent === 'Dr. Lee · Dentist'`)
		alice.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), "Thank you!\r"))
		drLee.wait(t, "the patient's name on her reply", messageWithText("theirs", "Thank you!")+
			`?.querySelector('.sender')?.textContent === 'Alice Johnson'`)
		var list struct{ Messages []map[string]any }
		require.Equal(t, 200, h.as("dr-lee", "dentist").do("GET", "/v1/"+conv.Name+"/messages", nil, &list))
		require.Equal(t, "Alice Johnson", list.Messages[0]["senderDisplayName"], "the directory's name for a patient")
		require.Equal(t, "Hana Kim", list.Messages[1]["senderDisplayName"], "the token's name for staff")
	}}, {"a patient opts out in the portal: a staff send is refused at once; then opts back in", func(t *testing.T) {
		alice.do(t, chromedp.Click(chromedp.CSS(".prefs-link")))
		alice.wait(t, "the switch, on", `document.querySelector('#chat-opt-in')?.getAttribute('aria-checked') === 'true' &&
			!document.querySelector('#chat-opt-in').disabled && location.hash === '#preferences' &&
			document.querySelector('#chat-opt-in-label').textContent === 'Chat messages from my practice' &&
			document.querySelector('.topnav [aria-current="page"]')?.textContent === 'Preferences'`)
		alice.docScreenshot(t, "communication-preferences", 400)
		alice.do(t, chromedp.Click(chromedp.CSS("#chat-opt-in")))
		alice.wait(t, "the switch, off", `document.querySelector('#chat-opt-in').getAttribute('aria-checked') === 'false' &&
			document.querySelector('.setting-status').textContent.startsWith('Chat messages turned off') &&
			document.querySelector('#chat-opt-in-desc').textContent.startsWith('Off: your practice cannot message you by chat')`)

		// The very next send is refused, with the words of the guide's troubleshooting row.
		drLee.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), "Can you come in Tuesday?\r"))
		drLee.wait(t, "the refusal", `document.querySelector('.composer-error')?.textContent === 'Patient has opted out of chat; offer SMS instead'`)

		// The Inbox says what it means and how to turn it back on.
		alice.do(t, chromedp.Click(chromedp.CSS(".back-link")))
		alice.wait(t, "the opt-out notice in the Inbox", `(() => {
			const n = document.querySelector('.optout-notice');
			return n && !n.hidden && n.textContent.includes('Your practice cannot message you by chat') &&
				n.querySelector('a[href="#preferences"]') != null;
		})()`)
		alice.screenshot(t, "optout-notice")
		alice.do(t, chromedp.Click(chromedp.CSS(".optout-notice a")))
		alice.wait(t, "the switch, off", `document.querySelector('#chat-opt-in')?.getAttribute('aria-checked') === 'false' && !document.querySelector('#chat-opt-in').disabled`)
		alice.do(t, chromedp.Click(chromedp.CSS("#chat-opt-in")))
		alice.wait(t, "the switch, on again", `document.querySelector('#chat-opt-in').getAttribute('aria-checked') === 'true' &&
			document.querySelector('.setting-status').textContent.startsWith('Chat messages turned on')`)
		drLee.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), "\r"))
		drLee.wait(t, "the send accepted", messageWithText("mine", "Can you come in Tuesday?")+` != null && !document.querySelector('.composer-error span')`)
		alice.do(t, chromedp.Click(chromedp.CSS(".back-link")))
		alice.wait(t, "no notice", `document.querySelector('.optout-notice')?.hidden === true`)
	}}, {"an admin reads the audit log of one patient's thread, verifies, downloads and exports", func(t *testing.T) {
		// The log is written from the event stream: wait until it has Dr. Lee's opening of the thread.
		adam := h.as("adam", "practice_admin")
		require.Eventually(t, func() bool {
			var list struct{ AuditEvents []struct{ Actor string } }
			q := "?filter=" + url.QueryEscape(`action="message.list" AND actor="users/dr-lee" AND resource="`+conv.Name+`"`)
			return adam.do("GET", "/v1/auditEvents"+q, nil, &list) == 200 && len(list.AuditEvents) > 0
		}, stepTimeout, 20*time.Millisecond)
		admin.signIn(t, "staff:adam", "demo")
		// The admin chats too; the thread shows who wrote (names are learned from messages).
		admin.do(t, chromedp.Click(chromedp.CSS(threadSel(conv.Name))))
		admin.wait(t, "Dr. Lee's message", messageWithText("mine", "Your crown is ready")+`?.querySelector('.sender')?.textContent === 'Dr. Lee · Dentist'`)
		admin.do(t, chromedp.Click(chromedp.CSS(`.topnav a[href="#audit"]`)))
		admin.wait(t, "the audit log with names", `location.hash === '#audit' &&
			document.querySelector('.topnav [aria-current="page"]')?.textContent === 'Audit log' &&
			document.querySelectorAll('.audit-table tbody tr').length > 0 &&
			document.querySelector('#audit-resource option[value="`+conv.Name+`"]')?.textContent === 'Alice Johnson'`)
		admin.do(t, setValue("#audit-resource", conv.Name), setValue("#audit-action", "message.list"),
			chromedp.Click(chromedp.CSS("#audit-apply")))
		admin.wait(t, "only that thread, and Dr. Lee by name", `(() => {
			const rows = [...document.querySelectorAll('.audit-table tbody tr')];
			return document.querySelector('.filter-text').textContent === 'filter: action="message.list" AND resource="`+conv.Name+`"' &&
				rows.length > 0 && rows.every((r) => r.dataset.action === 'message.list' && r.querySelector('.audit-tech').textContent.includes(`+js(conv.Name)+`)) &&
				rows.some((r) => r.querySelector('.audit-sentence').textContent === 'Dr. Lee opened the conversation with Alice Johnson') &&
				rows.some((r) => r.querySelector('.audit-sentence').textContent === 'Alice Johnson opened their conversation with the practice');
		})()`)
		// Newest first.
		times := admin.eval(t, `JSON.stringify([...document.querySelectorAll('.audit-table tbody time')].map((e) => e.getAttribute('datetime')))`)
		var ts []string
		require.NoError(t, json.Unmarshal([]byte(times), &ts))
		for i := 1; i < len(ts); i++ {
			require.GreaterOrEqual(t, ts[i-1], ts[i], "newest first")
		}

		admin.do(t, chromedp.Click(chromedp.CSS("#audit-verify")))
		admin.wait(t, "the log verified", `(() => {
			const v = document.querySelector('.verify-result.verify-ok');
			return v && v.textContent.includes('The audit log is intact') && Number(v.querySelector('.v-checked').textContent) > 0 &&
				v.querySelector('.v-checked').textContent === v.querySelector('.v-size').textContent &&
				v.querySelector('.v-root').textContent.length > 20;
		})()`)
		admin.docScreenshot(t, "audit-log", 960)

		dir := admin.downloadsTo(t)
		admin.do(t, chromedp.Click(chromedp.CSS("#audit-checkpoint")))
		var cp struct {
			TreeSize int    `json:"treeSize"`
			RootHash string `json:"rootHash"`
			Note     string `json:"note"`
		}
		require.NoError(t, json.Unmarshal(waitFile(t, dir, "audit-checkpoint-demo-"), &cp))
		require.Positive(t, cp.TreeSize)
		require.NotEmpty(t, cp.RootHash)
		require.Contains(t, cp.Note, "\n\n— ", "a signed note")

		admin.do(t, chromedp.Click(chromedp.CSS("#audit-export")))
		lines := bufio.NewScanner(bytes.NewReader(waitFile(t, dir, "audit-log-demo-")))
		n := 0
		for lines.Scan() {
			var ev struct{ Action, Resource string }
			require.NoError(t, json.Unmarshal(lines.Bytes(), &ev))
			require.Equal(t, "message.list", ev.Action, "the export has the filter")
			require.True(t, strings.HasPrefix(ev.Resource, conv.Name), ev.Resource)
			n++
		}
		require.Positive(t, n)
		admin.wait(t, "the export reported", `document.querySelector('.tool-status').textContent.startsWith('Exported the filtered audit log')`)
	}}, {"a hygienist has no Audit log: no link, and 403 from the API", func(t *testing.T) {
		hana.signIn(t, "staff:hana", "demo")
		hana.wait(t, "Chat only", `[...document.querySelectorAll('.topnav .nav-link')].map((a) => a.textContent).join() === 'Chat'`)
		hana.do(t, chromedp.Navigate(b.base+"/#audit"))
		hana.wait(t, "still Chat", `document.querySelector('.sidebar') != null && !document.querySelector('.audit-table')`)
		// The Archived tab names the configured archive period.
		hana.do(t, chromedp.Click(chromedp.CSS("#tab-archived")))
		hana.wait(t, "the archive period", `document.querySelector('.list-status').textContent ===
			'No archived conversations. Threads are archived after 3 months without messages.'`)
		api := h.as("hana", "hygienist")
		for _, path := range []string{"/v1/auditEvents", "/v1/auditEvents:verify", "/v1/auditEvents:checkpoint", "/v1/auditEvents:export"} {
			var e apiError
			require.Equal(t, 403, api.do("GET", path, nil, &e), path)
			require.Equal(t, "PERMISSION_DENIED", e.reason(), path)
		}
	}}, {"narrow screens: the new pages fit", func(t *testing.T) {
		fits := `(() => {
			const p = document.querySelector('.page'), bar = document.querySelector('.topbar');
			return p && p.scrollWidth <= p.clientWidth && bar.scrollWidth <= bar.clientWidth &&
				[...document.querySelectorAll('.topnav .nav-link, .signout')].every((e) => e.getBoundingClientRect().right <= 390);
		})()`
		alice.do(t, chromedp.EmulateViewport(390, 760), chromedp.Click(chromedp.CSS(`.topnav a[href="#preferences"]`)))
		alice.wait(t, "the preferences page within the width", `document.querySelector('#chat-opt-in') != null && `+fits)
		alice.screenshot(t, "narrow-preferences")
		admin.do(t, chromedp.EmulateViewport(390, 760))
		admin.wait(t, "the audit log within the width", fits)
		admin.screenshot(t, "narrow-audit")
	}}}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			return
		}
	}
	require.Empty(t, b.pageErrors(), "JavaScript errors in the pages")
	// The load check above can fail: the refused send is in the browser log.
	require.NotEmpty(t, b.loggedErrors(), "failed requests are recorded")
}
