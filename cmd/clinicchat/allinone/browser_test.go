package allinone_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/stretchr/testify/require"
)

// The web client in a real browser (Debian's Chromium, headless) against a
// real all-in-one: a staff member and a patient, each in a browser context
// of their own, chat through the UI and see each other's changes live.
//
// Chromium: apt-get install -y chromium (or set CLINICCHAT_CHROMIUM to
// another binary). Without it the test skips locally and fails under
// CI=true. CLINICCHAT_SCREENSHOTS=<dir> saves a PNG at each step.

// stepTimeout bounds each browser step, so a missing element fails fast.
const stepTimeout = 15 * time.Second

// chromiumPath is the browser binary; without one the test skips (fails
// under CI=true).
func chromiumPath(t *testing.T) string {
	t.Helper()
	p := os.Getenv("CLINICCHAT_CHROMIUM")
	if p == "" {
		p = "/usr/bin/chromium"
	}
	if _, err := os.Stat(p); err != nil {
		msg := fmt.Sprintf("browser tests need Chromium at %s (apt-get install -y chromium): %v", p, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// browser is one headless Chromium; each user gets a tab in a browser
// context of their own (separate storage).
type browser struct {
	base     string
	root     context.Context
	shotsDir string

	mu     sync.Mutex
	shots  int
	errors []string
	// logged are the browser log's errors, such as "Failed to load
	// resource: … 400" for every request answered with an error.
	logged []string
}

func newBrowser(t *testing.T, base string) *browser {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("mute-audio", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	}
	// A cap on the whole browser session; each step has its own stepTimeout.
	// Generous: on a busy shared machine a whole test has taken over 2 minutes.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc)
	root, cancelRoot := chromedp.NewContext(alloc)
	t.Cleanup(cancelRoot)
	require.NoError(t, chromedp.Do(root), "start Chromium")
	return &browser{base: base, root: root, shotsDir: os.Getenv("CLINICCHAT_SCREENSHOTS")}
}

// tab is one user's page.
type tab struct {
	b    *browser
	ctx  context.Context
	name string
}

// tab opens a tab in a fresh browser context and records the page's
// uncaught exceptions and console errors.
func (b *browser) tab(t *testing.T, name string) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.root, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	require.NoError(t, chromedp.Do(ctx))
	require.NoError(t, chromedp.Listen(ctx, func(ev any) {
		var line string
		switch e := ev.(type) {
		case *cdplog.EventEntryAdded:
			if e.Entry != nil && e.Entry.Level == cdplog.EntryLevelError {
				b.mu.Lock()
				b.logged = append(b.logged, name+": "+e.Entry.Text+" "+e.Entry.URL)
				b.mu.Unlock()
			}
		case *runtime.EventExceptionThrown:
			line = "exception: " + e.ExceptionDetails.Text
			if e.ExceptionDetails.Exception != nil {
				line += " " + e.ExceptionDetails.Exception.Description
			}
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError {
				var parts []string
				for _, a := range e.Args {
					if a.Description != "" {
						parts = append(parts, a.Description)
					} else {
						parts = append(parts, string(a.Value))
					}
				}
				line = "console.error: " + strings.Join(parts, " ")
			}
		}
		if line != "" {
			b.mu.Lock()
			b.errors = append(b.errors, name+": "+line)
			b.mu.Unlock()
		}
	}))
	return &tab{b: b, ctx: ctx, name: name}
}

// pageErrors are the exceptions and console errors recorded so far.
func (b *browser) pageErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errors...)
}

// loggedErrors are the browser log's errors recorded so far (failed
// requests among them).
func (b *browser) loggedErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.logged...)
}

// do runs actions in the tab, one after the other. An action that finds
// its node replaced between the query and the use (the page re-rendered a
// list on a live event: "Could not find node with given id") runs again on
// the new node; a click fails so before its mouse events, so it never
// clicks twice.
func (tb *tab) do(t *testing.T, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	for _, a := range actions {
		err := chromedp.Do(ctx, a)
		for try := 1; err != nil && try < 5 && nodeReplaced(err); try++ {
			err = chromedp.Do(ctx, a)
		}
		if err != nil {
			tb.screenshot(t, "failed")
			require.NoError(t, err)
		}
	}
}

// nodeReplaced tells whether err is Chromium's answer about a node that
// left the document after it was queried.
func nodeReplaced(err error) bool {
	m := err.Error()
	return strings.Contains(m, "Could not find node with given id") || strings.Contains(m, "Node is detached from document") ||
		strings.Contains(m, "No node with given id found")
}

// eval returns the value of a JavaScript expression.
func (tb *tab) eval(t *testing.T, expr string) string {
	t.Helper()
	v, err := chromedp.Run(tb.ctx, chromedp.Evaluate[string](expr))
	require.NoError(t, err)
	return v
}

// wait waits until the JavaScript expression is truthy.
func (tb *tab) wait(t *testing.T, what, expr string) {
	t.Helper()
	_, err := chromedp.Run(tb.ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(stepTimeout)))
	if err != nil {
		tb.screenshot(t, "failed")
		require.NoError(t, err, "%s: waiting for %s; the page then: %s", tb.name, what, tb.pageState())
	}
}

// pageState summarises what a failed wait found: the live status, the
// composer's text and error, an open dialog's text (a picker's error
// shows there), and the thread's last messages.
func (tb *tab) pageState() string {
	ctx, cancel := context.WithTimeout(tb.ctx, 2*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify({
		live: document.querySelector('.live-status')?.dataset.state,
		composer: document.querySelector('.composer-input')?.value,
		composerError: document.querySelector('.composer-error')?.textContent,
		dialog: document.querySelector('dialog')?.textContent.slice(0, 200),
		dialogOpen: document.querySelector('dialog')?.open,
		lastMessages: [...document.querySelectorAll('.msg')].slice(-3).map((m) => m.textContent.slice(0, 80)),
		online: navigator.onLine,
	})`))
	if err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	return v
}

// screenshot saves the viewport when CLINICCHAT_SCREENSHOTS is set.
func (tb *tab) screenshot(t *testing.T, name string) {
	t.Helper()
	if tb.b.shotsDir == "" {
		return
	}
	png, err := chromedp.Run(tb.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return
	}
	tb.b.mu.Lock()
	tb.b.shots++
	path := filepath.Join(tb.b.shotsDir, fmt.Sprintf("%02d-%s-%s.png", tb.b.shots, tb.name, name))
	tb.b.mu.Unlock()
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Logf("screenshot %s: %v", name, err)
	}
}

// rightClick dispatches a real right mouse click on the element.
func (tb *tab) rightClick(t *testing.T, sel string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	// A live event may re-render the list between finding the node and
	// clicking it; then the node is gone and the click is retried on the
	// element that replaced it (bounded by the step timeout).
	for {
		nodes, err := chromedp.Run(ctx, chromedp.Nodes(chromedp.CSS(sel), chromedp.NodeVisible))
		require.NoError(t, err)
		require.NotEmpty(t, nodes)
		err = chromedp.Do(ctx, chromedp.MouseClickNode(nodes[0], chromedp.ButtonRight))
		if err == nil {
			return
		}
		if ctx.Err() != nil || !strings.Contains(err.Error(), "Could not find node") {
			tb.screenshot(t, "failed")
			require.NoError(t, err)
		}
	}
}

// setValue sets a form control's value as a script would, then fires change.
func setValue(sel, value string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Evaluate[chromedp.Void](`(() => { const el = document.querySelector(`+js(sel)+`);
			el.value = `+js(value)+`; el.dispatchEvent(new Event('change', {bubbles: true})); })()`)(ctx, t)
		return err
	})
}

// signIn uses the dev-mode sign-in screen.
func (tb *tab) signIn(t *testing.T, option, practice string) {
	t.Helper()
	tb.do(t,
		chromedp.Navigate(tb.b.base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#signin-user")),
		setValue("#signin-user", option),
		setValue("#signin-practice", practice),
	)
	tb.screenshot(t, "signin")
	tb.do(t,
		chromedp.Click(chromedp.CSS("#signin-submit")),
		chromedp.WaitVisible(chromedp.CSS(".sidebar")),
	)
	tb.waitLive(t)
}

func (tb *tab) waitLive(t *testing.T) {
	t.Helper()
	tb.wait(t, "the event stream to be live", `document.querySelector('.live-status')?.dataset.state === 'live'`)
}

// js quotes s as a JavaScript string literal.
func js(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`, "\n", `\n`).Replace(s) + "'"
}

// threadSel selects the sidebar button of a conversation.
func threadSel(conv string) string { return `.thread[data-name="` + conv + `"]` }

// threadWith is an expression for the sidebar button of a conversation.
func threadWith(conv string) string { return `document.querySelector(` + js(threadSel(conv)) + `)` }

// messageWithText is an expression for the message element showing text.
func messageWithText(side, text string) string {
	return `[...document.querySelectorAll('.msg.` + side + `')].find((li) => li.querySelector('.text')?.textContent === ` + js(text) + `)`
}

// writePNG makes a small PNG file.
func writePNG(t *testing.T, path string) {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, 48, 32))
	for x := range 48 {
		for y := range 32 {
			img.Set(x, y, color.RGBA{R: 14, G: uint8(116 + y), B: 144, A: 255})
		}
	}
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	require.NoError(t, os.WriteFile(path, buf.Bytes(), 0o600))
}

// TestWebClientServed checks how the gateway serves the web client,
// without a browser.
func TestWebClientServed(t *testing.T) {
	in := start(t, t.TempDir())
	base := "http://" + in.HTTPAddr
	get := func(path string, hdr map[string]string) (*http.Response, string) {
		req, err := http.NewRequest(http.MethodGet, base+path, nil)
		require.NoError(t, err)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, string(body)
	}

	resp, body := get("/", nil)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Contains(t, body, `<script type="module" src="/app/main.js"></script>`)
	csp := resp.Header.Get("Content-Security-Policy")
	for _, d := range []string{"default-src 'self'", "script-src 'self'", "frame-ancestors 'none'", "object-src 'none'"} {
		require.Contains(t, csp, d)
	}
	require.NotContains(t, csp, "unsafe-inline")
	require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
	require.Equal(t, "no-referrer", resp.Header.Get("Referrer-Policy"))
	require.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"))

	etag := resp.Header.Get("ETag")
	require.NotEmpty(t, etag)
	resp, _ = get("/", map[string]string{"If-None-Match": etag})
	require.Equal(t, http.StatusNotModified, resp.StatusCode)

	resp, body = get("/app/main.js", nil)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "text/javascript; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
	require.Contains(t, body, "import ")
	resp, _ = get("/app/style.css", nil)
	require.Equal(t, "text/css; charset=utf-8", resp.Header.Get("Content-Type"))

	// Anything else outside the API is still the API's JSON 404.
	for _, p := range []string{"/app/nope.js", "/index.html", "/app", "/nope"} {
		resp, body = get(p, nil)
		require.Equal(t, 404, resp.StatusCode, p)
		require.Contains(t, body, `"NOT_FOUND"`, p)
	}
	resp, _ = get("/healthz", nil)
	require.Equal(t, 200, resp.StatusCode)
}

func TestBrowserChat(t *testing.T) {
	chromiumPath(t) // skip before starting anything
	in := start(t, t.TempDir())
	h := harness{t: t, in: in}
	b := newBrowser(t, "http://"+in.HTTPAddr)
	staff := b.tab(t, "staff")
	alice := b.tab(t, "alice")
	api := h.as("dr-lee", "dentist")
	var conv conversation

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{{"staff signs in and starts a conversation with Alice", func(t *testing.T) {
		staff.signIn(t, "staff:dr-lee", "demo")
		staff.wait(t, "the Chat nav", `document.querySelector('.topnav [aria-current="page"]')?.textContent === 'Chat'`)
		staff.do(t,
			chromedp.Click(chromedp.CSS(".new-conv")),
			chromedp.WaitVisible(chromedp.CSS("#patient-search")),
			chromedp.SendKeys(chromedp.CSS("#patient-search"), "da"),
		)
		// David has no portal account and Carol opted out: both are shown
		// greyed, with the reason, and cannot be chosen.
		staff.wait(t, "Dave shown as not eligible", `(() => {
			const d = document.querySelector('.patient[data-name="patients/dave"]');
			const c = document.querySelector('.patient[data-name="patients/carol"]');
			return document.querySelectorAll('.patient').length === 2 &&
				d && d.disabled && d.textContent.includes('No portal account — offer SMS instead') &&
				c && c.disabled && c.textContent.includes('Opted out of chat — offer SMS instead');
		})()`)
		staff.screenshot(t, "patient-search-ineligible")
		// Two John Smiths: told apart by date of birth.
		staff.do(t, setValue("#patient-search", ""), chromedp.SendKeys(chromedp.CSS("#patient-search"), "john smith"))
		staff.wait(t, "both John Smiths with their birth dates", `(() => {
			const p = [...document.querySelectorAll('.patient')];
			return p.length === 2 && p.every((b) => b.textContent.startsWith('JSJohn Smith') && !b.disabled) &&
				p[0].textContent.includes('1970') !== p[1].textContent.includes('1970');
		})()`)
		staff.do(t, setValue("#patient-search", ""), chromedp.SendKeys(chromedp.CSS("#patient-search"), "alice"))
		staff.wait(t, "Alice in the results with her date of birth", `(() => {
			const a = document.querySelector('.patient[data-name="patients/alice"]');
			return a && !a.disabled && a.textContent.includes('1985') && document.querySelectorAll('.patient').length === 1;
		})()`)
		staff.do(t, chromedp.Click(chromedp.CSS(`.patient[data-name="patients/alice"]`)))
		staff.wait(t, "Alice's thread open", `document.querySelector('.thread-head h2')?.textContent === 'Alice Johnson' &&
			document.activeElement === document.querySelector('.composer-input') && !document.querySelector('dialog')`)
		convs := api.conversations("")
		require.Len(t, convs, 1)
		conv = convs[0]
		require.Equal(t, "patients/alice", conv.Patient)
		staff.wait(t, "the thread in the sidebar", threadWith(conv.Name)+`?.getAttribute('aria-current') === 'true'`)
	}}, {"Alice sees a staff message live and staff see it read", func(t *testing.T) {
		alice.signIn(t, "patient:alice", "demo")
		alice.wait(t, "the Inbox nav", `document.querySelector('.topnav [aria-current="page"]')?.textContent === 'Inbox'`)

		const text = "Your crown is ready — call us to book a fitting."
		staff.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), text+"\r"))
		staff.wait(t, "the sent message with its status", `(() => {
			const li = `+messageWithText("mine", text)+`;
			return li && ['Sent', 'Delivered'].includes(li.querySelector('.status')?.textContent) &&
				document.querySelector('.composer-input').value === '';
		})()`)

		// Alice's Inbox updates without a reload.
		alice.wait(t, "the new message in Alice's Inbox", `(() => {
			const th = `+threadWith(conv.Name)+`;
			return th && th.querySelector('.thread-preview')?.textContent === `+js(text)+` &&
				th.querySelector('.badge')?.textContent === '1';
		})()`)
		alice.screenshot(t, "inbox-live")
		staff.wait(t, "Delivered once Alice's stream got it", messageWithText("mine", text)+`?.querySelector('.status')?.textContent === 'Delivered'`)

		// Opening the thread marks it read; staff see "Read" live.
		alice.do(t, chromedp.Click(chromedp.CSS(threadSel(conv.Name))))
		alice.wait(t, "the message in Alice's thread", messageWithText("theirs", text)+` !== undefined`)
		staff.wait(t, "the message turning Read", messageWithText("mine", text)+`?.querySelector('.status')?.textContent === 'Read'`)
		alice.wait(t, "the unread badge gone", `!`+threadWith(conv.Name)+`.querySelector('.badge')`)
		staff.screenshot(t, "read")
	}}, {"Alice replies and staff see it live", func(t *testing.T) {
		const reply = "Thank you! I'll call tomorrow."
		alice.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), reply+"\r"))
		alice.wait(t, "Alice's reply in her thread", messageWithText("mine", reply)+`?.querySelector('.status') != null`)
		staff.wait(t, "the reply in the staff thread", messageWithText("theirs", reply)+` !== undefined`)
		// Staff have the thread open, so it is read at once.
		alice.wait(t, "her reply turning Read", messageWithText("mine", reply)+`?.querySelector('.status')?.textContent === 'Read'`)
		alice.screenshot(t, "thread")
	}}, {"pin from the context menu moves a thread to the top", func(t *testing.T) {
		emma := api.startConversation("emma")
		api.send(emma.Name, "Reminder: cleaning on Thursday", reqID("browser-emma", 0))
		staff.wait(t, "Emma's newer thread first", `document.querySelector('.thread-list .thread')?.dataset.name === `+js(emma.Name))

		staff.rightClick(t, threadSel(conv.Name))
		staff.wait(t, "the context menu", `[...document.querySelectorAll('.menu [role="menuitem"]')].map((b) => b.textContent).join('|') === 'Pin to top|Mute notifications|Assign…|Export PDF' &&
			document.activeElement?.getAttribute('role') === 'menuitem'`)
		staff.screenshot(t, "context-menu")
		staff.do(t, chromedp.Click(chromedp.CSS(`.menu [role="menuitem"]:first-child`)))
		staff.wait(t, "Alice's pinned thread first", `(() => {
			const first = document.querySelector('.thread-list .thread');
			return first?.dataset.name === `+js(conv.Name)+` && first.classList.contains('pinned') &&
				first.querySelector('.flag[title="Pinned"]') && !document.querySelector('.menu');
		})()`)
		require.Eventually(t, func() bool {
			for _, c := range api.conversations("") {
				if c.Name == conv.Name {
					return c.Pinned
				}
			}
			return false
		}, 5*time.Second, 50*time.Millisecond)

		// Mute from the same menu, chosen with the keyboard.
		staff.rightClick(t, threadSel(emma.Name))
		staff.wait(t, "the menu for Emma", `document.querySelector('.menu')?.getAttribute('aria-label') === 'Actions for Emma Wilson'`)
		staff.do(t, chromedp.KeyEvent(kb.ArrowDown+kb.Enter)) // "Mute notifications"
		staff.wait(t, "Emma's thread muted", threadWith(emma.Name)+`?.querySelector('.flag[title="Muted"]') != null`)
	}}, {"search and the Archived tab", func(t *testing.T) {
		staff.do(t, chromedp.SendKeys(chromedp.CSS("#conv-search"), "emm"))
		staff.wait(t, "only Emma's thread", `[...document.querySelectorAll('.thread-list .thread')].map((b) => b.querySelector('.thread-name').textContent).join() === 'Emma Wilson'`)
		staff.do(t, chromedp.Click(chromedp.CSS("#tab-archived")))
		staff.wait(t, "no archived thread", `document.querySelector('#tab-archived').getAttribute('aria-selected') === 'true' &&
			!document.querySelector('.thread-list .thread') && document.querySelector('.list-status').textContent.startsWith('No conversation')`)
		staff.do(t, chromedp.Click(chromedp.CSS("#tab-active")), setValue("#conv-search", ""), chromedp.SendKeys(chromedp.CSS("#conv-search"), " "))
		staff.wait(t, "both threads back", `document.querySelectorAll('.thread-list .thread').length === 2`)
	}}, {"older messages load on demand, oldest at the top", func(t *testing.T) {
		emma := api.startConversation("emma") // find or start: the thread from before
		for i := range 60 {
			api.send(emma.Name, fmt.Sprintf("Note %02d", i), reqID("browser-page", i))
		}
		staff.do(t, chromedp.Click(chromedp.CSS(threadSel(emma.Name))))
		staff.wait(t, "the newest page", `(() => {
			const texts = [...document.querySelectorAll('.msg .text')].map((e) => e.textContent);
			return texts.length === 50 && texts.at(-1) === 'Note 59' && texts[0] === 'Note 10' &&
				!document.querySelector('.load-older').hidden;
		})()`)
		staff.do(t, chromedp.Click(chromedp.CSS(".load-older")))
		staff.wait(t, "every message in order", `(() => {
			const texts = [...document.querySelectorAll('.msg .text')].map((e) => e.textContent);
			return texts.length === 61 && texts[0] === 'Reminder: cleaning on Thursday' && texts[1] === 'Note 00' &&
				texts.at(-1) === 'Note 59' && document.querySelector('.load-older').hidden;
		})()`)
		// Arrow keys move between threads in the sidebar.
		staff.do(t, chromedp.Focus(chromedp.CSS(threadSel(emma.Name))), chromedp.KeyEvent(kb.ArrowUp))
		staff.wait(t, "focus on the thread above", `document.activeElement === document.querySelector('.thread-list .thread')`)
	}}, {"a patient who opted out: the send is refused in words", func(t *testing.T) {
		carol := api.startConversation("carol")
		staff.wait(t, "Carol's thread", threadWith(carol.Name)+` != null`)
		staff.do(t,
			chromedp.Click(chromedp.CSS(threadSel(carol.Name))),
			chromedp.WaitVisible(chromedp.CSS(".composer-input")),
			chromedp.SendKeys(chromedp.CSS(".composer-input"), "Hello Carol\r"),
		)
		staff.wait(t, "the refusal", `document.querySelector('.composer-error')?.textContent === 'Patient has opted out of chat; offer SMS instead' &&
			document.querySelector('.composer-input').value === 'Hello Carol' && !document.querySelector('.composer-error button')`)
		staff.screenshot(t, "opted-out")
	}}, {"/appt attaches an appointment card", func(t *testing.T) {
		staff.do(t,
			chromedp.Click(chromedp.CSS(threadSel(conv.Name))),
			chromedp.WaitVisible(chromedp.CSS(".composer-input")),
			chromedp.SendKeys(chromedp.CSS(".composer-input"), "/ap"),
		)
		staff.wait(t, "the shortcut menu", `(() => {
			const m = document.querySelector('.slash-menu');
			return m && !m.hidden && [...m.querySelectorAll('[role="option"]')].map((o) => o.dataset.command).join() === '/appt';
		})()`)
		staff.screenshot(t, "slash-menu")
		staff.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), "\r"))
		staff.wait(t, "the appointment picker", `document.querySelector('dialog.picker[open] .picker-item .artifact-card[data-type="APPOINTMENT"]') != null`)
		staff.screenshot(t, "appointment-picker")
		staff.do(t, chromedp.Click(chromedp.CSS(`dialog.picker .picker-item`)))
		staff.wait(t, "the card in the composer, the picker closed", `document.querySelector('.composer .tray-artifact .artifact-card[data-type="APPOINTMENT"]') != null &&
			document.querySelector('.composer-input').value === '' && !document.querySelector('dialog') &&
			document.activeElement === document.querySelector('.composer-input')`)
		staff.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), "See you then\r"))
		staff.wait(t, "the card in the thread", `(() => {
			const li = `+messageWithText("mine", "See you then")+`;
			return li?.querySelector('.artifact-card[data-type="APPOINTMENT"] .artifact-title')?.textContent.length > 0 &&
				!document.querySelector('.composer .tray-artifact');
		})()`)
		alice.wait(t, "the card in Alice's thread", messageWithText("theirs", "See you then")+`?.querySelector('.artifact-card[data-type="APPOINTMENT"]') != null`)
		// Alice has the thread open: it is read as it arrives.
		alice.wait(t, "no unread badge", `!`+threadWith(conv.Name)+`.querySelector('.badge')`)
		staff.screenshot(t, "appointment-card")
	}}, {"attachments: an image inline, an unsupported file refused", func(t *testing.T) {
		dir := t.TempDir()
		img := filepath.Join(dir, "xray.png")
		writePNG(t, img)
		bad := filepath.Join(dir, "setup.exe")
		require.NoError(t, os.WriteFile(bad, append([]byte("MZ\x90\x00\x03"), bytes.Repeat([]byte{0}, 200)...), 0o600))

		huge := filepath.Join(dir, "scan.pdf")
		f, err := os.Create(huge)
		require.NoError(t, err)
		require.NoError(t, f.Truncate(26_214_401)) // one byte over 25 MiB (sparse)
		require.NoError(t, f.Close())
		staff.do(t, chromedp.SetUploadFiles(chromedp.CSS(`.composer input[type="file"]`), []string{huge}))
		staff.wait(t, "the size refusal", `document.querySelector('.chip.chip-error .chip-msg')?.textContent === 'File over 25 MB — compress and retry'`)
		// Sending is refused until the failed file is removed; then the banner goes.
		staff.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), "\r"))
		staff.wait(t, "the banner", `document.querySelector('.composer-error')?.textContent === 'Remove the attachments that failed before sending.'`)
		staff.do(t, chromedp.Click(chromedp.CSS(`.chip.chip-error .chip-remove`)))
		staff.wait(t, "the banner gone", `document.querySelector('.composer-error').textContent === '' && !document.querySelector('.chip')`)
		staff.do(t, chromedp.SetUploadFiles(chromedp.CSS(`.composer input[type="file"]`), []string{bad}))
		staff.wait(t, "the refusal in words", `document.querySelector('.chip.chip-error .chip-msg')?.textContent.includes('can be attached')`)
		staff.screenshot(t, "unsupported-file")
		staff.do(t, chromedp.Click(chromedp.CSS(`.chip.chip-error .chip-remove`)))
		staff.do(t, chromedp.SetUploadFiles(chromedp.CSS(`.composer input[type="file"]`), []string{img}))
		staff.wait(t, "the uploaded file", `document.querySelector('.chip.chip-done .chip-name')?.textContent === 'xray.png' && !document.querySelector('.chip-error')`)
		staff.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), "Your X-ray\r"))
		for _, tb := range []*tab{staff, alice} {
			side := "mine"
			if tb == alice {
				side = "theirs"
			}
			tb.wait(t, "the image shown inline", `(() => {
				const img = `+messageWithText(side, "Your X-ray")+`?.querySelector('img.attachment-img');
				return img && img.src.startsWith('blob:') && img.complete && img.naturalWidth === 48 && img.alt === 'xray.png';
			})()`)
		}
		alice.screenshot(t, "image")
	}}, {"a sensitive message needs a fresh sign-in", func(t *testing.T) {
		staff.do(t, chromedp.Click(chromedp.CSS(".lock-toggle")))
		staff.wait(t, "the lock on", `document.querySelector('.lock-toggle').getAttribute('aria-pressed') === 'true'`)
		staff.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), "Your biopsy result is benign.\r"))
		staff.wait(t, "the sensitive message", messageWithText("mine", "Your biopsy result is benign.")+`?.querySelector('.sensitive-tag') != null &&
			document.querySelector('.lock-toggle').getAttribute('aria-pressed') === 'false'`)

		// Alice arrives from the portal with a token from 10 minutes ago
		// (#token=…): the message is locked.
		old := h.asIn("alice", "patient", "demo", 10*time.Minute)
		alice.do(t, chromedp.Navigate(alice.b.base+"/#token="+old.token))
		alice.wait(t, "the Inbox with the portal token", `document.querySelector('.sidebar') && location.hash === '' &&
			document.querySelector('.live-status')?.dataset.state === 'live'`)
		alice.do(t, chromedp.Click(chromedp.CSS(threadSel(conv.Name))))
		alice.wait(t, "the locked message", `(() => {
			const li = [...document.querySelectorAll('.msg.theirs')].at(-1);
			return li?.querySelector('.locked-title')?.textContent === 'Sensitive message — sign in again to view' &&
				!li.querySelector('.text');
		})()`)
		alice.screenshot(t, "locked")
		alice.do(t, chromedp.Click(chromedp.CSS(".unlock-btn")))
		alice.wait(t, "the message unlocked", messageWithText("theirs", "Your biopsy result is benign.")+` !== undefined && !document.querySelector('.locked-title')`)
	}}, {"offline: the stream resumes with Last-Event-ID and a retried send keeps its requestId", func(t *testing.T) {
		type sent struct{ url, method, lastEventID, body string }
		var mu sync.Mutex
		var requests []sent
		require.NoError(t, chromedp.Listen(staff.ctx, func(ev any) {
			if e, ok := ev.(*network.EventRequestWillBeSent); ok && e.Request != nil {
				r := sent{url: e.Request.URL, method: e.Request.Method}
				if v, ok := e.Request.Headers["Last-Event-ID"].(string); ok {
					r.lastEventID = v
				}
				for _, p := range e.Request.PostDataEntries {
					r.body += string(p.Bytes)
				}
				mu.Lock()
				requests = append(requests, r)
				mu.Unlock()
			}
		}))
		matching := func(f func(sent) bool) []sent {
			mu.Lock()
			defer mu.Unlock()
			var out []sent
			for _, r := range requests {
				if f(r) {
					out = append(out, r)
				}
			}
			return out
		}
		offline := func(off bool) chromedp.Action[chromedp.Void] {
			return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
				if _, err := cdp.Call(ctx, tg, network.Enable, network.EnableParams{}); err != nil {
					return err
				}
				var rules []*network.Conditions
				if off {
					rules = []*network.Conditions{{Offline: true, DownloadThroughput: -1, UploadThroughput: -1}}
				}
				if _, err := cdp.Call(ctx, tg, network.EmulateNetworkConditionsByRule,
					network.EmulateNetworkConditionsByRuleParams{MatchedNetworkConditions: rules}); err != nil {
					return err
				}
				_, err := cdp.Call(ctx, tg, network.OverrideNetworkState,
					network.OverrideNetworkStateParams{Offline: off, DownloadThroughput: -1, UploadThroughput: -1})
				return err
			})
		}

		staff.do(t, offline(true))
		staff.wait(t, "the stream to drop", `document.querySelector('.live-status').dataset.state === 'reconnecting'`)
		const question = "Did the new retainer fit well?"
		staff.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), question+"\r"))
		staff.wait(t, "the send refused offline, with Retry", `document.querySelector('.composer-error')?.textContent.startsWith('Not sent: cannot reach the server.') &&
			document.querySelector('.composer-error button')?.textContent === 'Retry' && document.querySelector('.composer-input').value === `+js(question))
		staff.screenshot(t, "offline")
		// Alice answers meanwhile; staff get it when back online.
		const answer = "Yes, it fits perfectly."
		h.as("alice", "patient").send(conv.Name, answer, reqID("browser-alice", 1))

		staff.do(t, offline(false))
		staff.waitLive(t)
		staff.wait(t, "Alice's answer after the reconnect", messageWithText("theirs", answer)+` !== undefined`)
		streams := matching(func(r sent) bool { return r.method == "GET" && strings.HasSuffix(r.url, "/v1/events") })
		require.NotEmpty(t, streams)
		require.NotEmpty(t, streams[len(streams)-1].lastEventID, "the reconnect resumes with Last-Event-ID")

		staff.do(t, chromedp.Click(chromedp.CSS(".composer-error button")))
		staff.wait(t, "the retried message sent", messageWithText("mine", question)+`?.querySelector('.status') != null &&
			document.querySelector('.composer-input').value === '' && !document.querySelector('.composer-error span')`)
		sends := matching(func(r sent) bool { return r.method == "POST" && strings.HasSuffix(r.url, "/messages") })
		require.Len(t, sends, 2, "the offline attempt and the retry")
		id := func(body string) string {
			var v struct{ RequestID string }
			require.NoError(t, json.Unmarshal([]byte(body), &v), body)
			return v.RequestID
		}
		require.NotEmpty(t, id(sends[0].body))
		require.Equal(t, id(sends[0].body), id(sends[1].body), "a retry reuses the requestId")
		var list struct{ Messages []message }
		require.Equal(t, 200, api.do("GET", "/v1/"+conv.Name+"/messages", nil, &list))
		n := 0
		for _, m := range list.Messages {
			if m.Text == question {
				n++
			}
		}
		require.Equal(t, 1, n)
	}}, {"narrow screens show one pane at a time", func(t *testing.T) {
		alice.do(t, chromedp.EmulateViewport(390, 760))
		alice.wait(t, "the thread alone", `getComputedStyle(document.querySelector('.sidebar')).display === 'none' &&
			getComputedStyle(document.querySelector('.back-btn')).display !== 'none'`)
		alice.screenshot(t, "narrow-thread")
		alice.do(t, clickNow(".back-btn"))
		alice.wait(t, "the list alone", `getComputedStyle(document.querySelector('.thread-pane')).display === 'none' &&
			document.activeElement?.classList.contains('thread')`)
		alice.screenshot(t, "narrow-list")
		staff.do(t, chromedp.EmulateViewport(390, 760), clickNow(".back-btn"))
		staff.wait(t, "the staff list alone", `getComputedStyle(document.querySelector('.thread-pane')).display === 'none' &&
			document.querySelector('.new-conv').getBoundingClientRect().right <= 390`)
		staff.screenshot(t, "narrow-list")
	}}, {"sign out", func(t *testing.T) {
		staff.do(t, chromedp.Click(chromedp.CSS(".signout")))
		staff.wait(t, "the sign-in screen", `document.querySelector('#signin-user') != null && !sessionStorage.getItem('clinicchat.token')`)
	}}}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			return
		}
	}
	require.Empty(t, b.pageErrors(), "JavaScript errors in the pages")
}

// clickNow clicks the element selector matches at this instant, in the page:
// for controls that a live update may re-render between a query and a click.
func clickNow(selector string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { document.querySelector(%q).click() })()`, selector))
}
