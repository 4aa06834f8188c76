package allinone_test

import (
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/stretchr/testify/require"
)

// The clinic's working day in a real browser: the practice admin writes a
// reply template; a patient writes; the thread shows under Needs reply with
// how long she has waited; a dentist assigns it to a hygienist, who finds it
// under Assigned to me and answers with the template (placeholders filled
// in); the thread leaves Needs reply; and the PDF exported with the thread
// menu's button holds the messages. Patients see none of it.
//
// CLINICCHAT_DOC_SCREENSHOTS=docs/screenshots saves the help page's
// screenshots of the Needs reply list and the Templates page.
func TestBrowserClinicWorkflow(t *testing.T) {
	chromiumPath(t) // skip before starting anything
	in := start(t, t.TempDir())
	h := harness{t: t, in: in}
	b := newBrowser(t, "http://"+in.HTTPAddr)
	adam := b.tab(t, "adam")
	hana := b.tab(t, "hana")
	drLee := b.tab(t, "dr-lee")
	alice := b.tab(t, "alice")
	const (
		patientText = "My filling fell out, can someone call me?"
		tplTitle    = "Call back"
		tplText     = "Hi {patient.firstName}, this is {staff.displayName} at {practice.name}. We will call you within the hour."
		expanded    = "Hi Alice, this is Hana Kim at demo. We will call you within the hour."
	)
	var conv conversation

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{{"the admin adds a template; an unknown placeholder is refused, naming it", func(t *testing.T) {
		adam.signIn(t, "staff:adam", "demo")
		adam.do(t, chromedp.Click(chromedp.CSS(`.topnav a[href="#templates"]`)))
		adam.wait(t, "the Templates page", `location.hash === '#templates' &&
			document.querySelector('.topnav [aria-current="page"]')?.textContent === 'Templates' &&
			document.querySelector('.tpl-card .list-status')?.textContent === 'No templates yet. Add the first one above.'`)
		adam.do(t, chromedp.SendKeys(chromedp.CSS("#tpl-title"), tplTitle),
			chromedp.SendKeys(chromedp.CSS("#tpl-text"), "Hi {staff.firstName}"),
			chromedp.Click(chromedp.CSS("#tpl-save")))
		adam.wait(t, "the server's reason", `document.querySelector('#tpl-error')?.textContent.includes('{staff.firstName}') &&
			document.querySelectorAll('.tpl-item').length === 0`)
		adam.screenshot(t, "template-refused")
		// The admin fixes it with the placeholder buttons and the keyboard.
		adam.do(t, setValue("#tpl-text", "Hi "), chromedp.Click(chromedp.CSS(`.placeholder-btn[aria-label^="Insert {patient.firstName}"]`)),
			chromedp.SendKeys(chromedp.CSS("#tpl-text"), strings.TrimPrefix(tplText, "Hi {patient.firstName}")),
			chromedp.Click(chromedp.CSS("#tpl-save")))
		adam.wait(t, "the template listed", `(() => {
			const items = [...document.querySelectorAll('.tpl-item')];
			return items.length === 1 && items[0].querySelector('.tpl-item-title').textContent === `+js(tplTitle)+` &&
				items[0].querySelector('.tpl-item-text').textContent === `+js(tplText)+` &&
				document.querySelector('#tpl-error').textContent === '' && document.querySelector('#tpl-title').value === '';
		})()`)
		adam.do(t, chromedp.Evaluate[chromedp.Void](`document.querySelector('.page').scrollTop = 0; document.activeElement.blur()`))
		adam.docScreenshot(t, "reply-templates", 980)
		var list struct {
			MessageTemplates []struct{ Title, Text string }
		}
		require.Equal(t, 200, h.asNamed("hana", "hygienist", "Hana Kim").do("GET", "/v1/messageTemplates", nil, &list))
		require.Len(t, list.MessageTemplates, 1)
		require.Equal(t, tplText, list.MessageTemplates[0].Text)
	}}, {"a patient writes; the thread shows under Needs reply with her waiting time", func(t *testing.T) {
		hana.signIn(t, "staff:hana", "demo") // the practice now knows Hana Kim
		drLee.signIn(t, "staff:dr-lee", "demo")
		conv = h.asNamed("dr-lee", "dentist", "Dr. Lee").startConversation("alice")
		alice.signIn(t, "patient:alice", "demo")
		alice.do(t, chromedp.Click(chromedp.CSS(threadSel(conv.Name))), chromedp.WaitVisible(chromedp.CSS(".composer-input")),
			chromedp.SendKeys(chromedp.CSS(".composer-input"), patientText+"\r"))
		alice.wait(t, "her message sent", messageWithText("mine", patientText)+` != null`)

		drLee.do(t, chromedp.Click(chromedp.CSS("#filter-needs-reply")))
		drLee.wait(t, "the thread under Needs reply, waiting", `document.querySelector('#filter-needs-reply').getAttribute('aria-pressed') === 'true' &&
			[...document.querySelectorAll('.thread-list .thread')].map((b) => b.dataset.name).join() === `+js(conv.Name)+` &&
			`+threadWith(conv.Name)+`.querySelector('.tag-waiting')?.textContent === 'waiting < 1 min'`)
		var list struct {
			Conversations []struct{ Name, AwaitingReplySince string }
		}
		require.Equal(t, 200, h.asNamed("dr-lee", "dentist", "Dr. Lee").do("GET", "/v1/conversations?awaitingReply=true", nil, &list))
		require.Len(t, list.Conversations, 1)
		require.NotEmpty(t, list.Conversations[0].AwaitingReplySince)
		// The label counts from awaitingReplySince: two hours ago reads "waiting 2 h".
		labels, err := chromedp.Run(drLee.ctx, chromedp.Evaluate[string](`import('/app/chat.js').then(({ waitedLabel }) => {
			const now = Date.parse('2026-01-02T12:00:00Z');
			return [waitedLabel('2026-01-02T09:59:00Z', now), waitedLabel('2026-01-02T11:55:00Z', now), waitedLabel('2025-12-30T11:00:00Z', now)].join('|');
		})`, chromedp.EvalAwaitPromise))
		require.NoError(t, err)
		require.Equal(t, "waiting 2 h|waiting 5 min|waiting 3 d", labels)
	}}, {"a dentist assigns it to a colleague from the right-click menu", func(t *testing.T) {
		drLee.rightClick(t, threadSel(conv.Name))
		drLee.wait(t, "the menu", `document.querySelector('.menu [data-action="assign"]')?.textContent === 'Assign…'`)
		drLee.do(t, chromedp.Click(chromedp.CSS(`.menu [data-action="assign"]`)))
		drLee.wait(t, "the practice's staff, by name", `(() => {
			const names = [...document.querySelectorAll('.assign-dialog .staff-option .patient-name')].map((e) => e.textContent);
			return document.querySelector('.assign-dialog[open]') && names.includes('Hana Kim') && names.includes('Dr. Lee (you)') &&
				names.includes('Adam Novak') && document.querySelector('.assign-current').textContent === 'Not assigned.' &&
				document.querySelector('#assign-clear').hidden;
		})()`)
		drLee.screenshot(t, "assign-dialog")
		drLee.do(t, chromedp.Click(chromedp.CSS(`.assign-dialog .staff-option[data-name="users/hana"]`)))
		drLee.wait(t, "the assignee on the thread", `!document.querySelector('.assign-dialog') &&
			`+threadWith(conv.Name)+`?.querySelector('.tag-assignee')?.textContent === 'Assigned to Hana Kim'`)
		var got struct{ Assignee, AssigneeDisplayName string }
		require.Equal(t, 200, h.asNamed("dr-lee", "dentist", "Dr. Lee").do("GET", "/v1/"+conv.Name, nil, &got))
		require.Equal(t, "users/hana", got.Assignee)
		require.Equal(t, "Hana Kim", got.AssigneeDisplayName)
		drLee.do(t, chromedp.Evaluate[chromedp.Void](`document.querySelectorAll('.toast').forEach((e) => e.remove())`))
		drLee.docScreenshot(t, "needs-reply", 480)
	}}, {"the colleague finds it under Assigned to me and answers with the template", func(t *testing.T) {
		hana.do(t, chromedp.Click(chromedp.CSS("#filter-mine")))
		hana.wait(t, "the thread, assigned to her", `[...document.querySelectorAll('.thread-list .thread')].map((b) => b.dataset.name).join() === `+js(conv.Name)+` &&
			`+threadWith(conv.Name)+`.querySelector('.tag-assignee').textContent === 'Assigned to you'`)
		hana.do(t, chromedp.Click(chromedp.CSS(threadSel(conv.Name))), chromedp.WaitVisible(chromedp.CSS(".composer-input")))
		hana.wait(t, "the patient's message", messageWithText("theirs", patientText)+` != null`)
		hana.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), "/"))
		hana.wait(t, "the shortcuts, then the template by title", `[...document.querySelectorAll('.slash-menu [role="option"]')].map((o) =>
			o.querySelector('.slash-cmd, .slash-title').textContent).join('|') === '/appt|/invoice|/rx|`+tplTitle+`' &&
			document.querySelector('.slash-template .slash-hint').textContent === `+js(expanded))
		hana.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), "call"))
		hana.wait(t, "only the template", `[...document.querySelectorAll('.slash-menu [role="option"]')].length === 1 &&
			document.querySelector('.slash-template[aria-selected="true"]') != null`)
		hana.screenshot(t, "template-menu")
		hana.do(t, chromedp.KeyEvent(kb.Enter))
		hana.wait(t, "the expanded text, for editing", `document.querySelector('.composer-input').value === `+js(expanded)+` &&
			document.querySelector('.slash-menu').hidden && document.activeElement === document.querySelector('.composer-input')`)
		hana.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), " Thanks!"), chromedp.KeyEvent(kb.Enter))
		sent := expanded + " Thanks!"
		hana.wait(t, "the reply sent", messageWithText("mine", sent)+`?.querySelector('.status') != null`)
		alice.wait(t, "the patient reads it", messageWithText("theirs", sent)+` != null`)
		var msgs struct{ Messages []message }
		require.Equal(t, 200, h.asNamed("hana", "hygienist", "Hana Kim").do("GET", "/v1/"+conv.Name+"/messages", nil, &msgs))
		require.Equal(t, sent, msgs.Messages[0].Text, "the placeholders came out right")
		require.Equal(t, "users/hana", msgs.Messages[0].Sender)
	}}, {"the thread leaves Needs reply", func(t *testing.T) {
		drLee.wait(t, "Needs reply empty", `!document.querySelector(`+js(threadSel(conv.Name))+`) &&
			document.querySelector('.list-status').textContent === 'No patient is waiting for a reply.'`)
		require.Empty(t, h.asNamed("dr-lee", "dentist", "Dr. Lee").conversations("?awaitingReply=true"))
		drLee.do(t, chromedp.Click(chromedp.CSS("#filter-all")))
		drLee.wait(t, "the thread under All, no longer waiting", threadWith(conv.Name)+` != null && !`+threadWith(conv.Name)+`.querySelector('.tag-waiting')`)
	}}, {"Export PDF in the thread's menu downloads the thread", func(t *testing.T) {
		dir := drLee.downloadsTo(t)
		drLee.do(t, chromedp.Click(chromedp.CSS(threadSel(conv.Name))), chromedp.WaitVisible(chromedp.CSS(`.thread-head [aria-label="Conversation actions"]`)))
		drLee.wait(t, "the assignee in the thread head", `document.querySelector('.thread-sub')?.textContent.startsWith('Assigned to Hana Kim')`)
		drLee.do(t, chromedp.Click(chromedp.CSS(`.thread-head [aria-label="Conversation actions"]`)))
		drLee.wait(t, "the thread menu", `document.querySelector('.menu [data-action="export"]')?.textContent === 'Export PDF'`)
		drLee.do(t, chromedp.Click(chromedp.CSS(`.menu [data-action="export"]`)))
		pdf := waitFile(t, dir, "conversation-")
		require.True(t, strings.HasPrefix(string(pdf), "%PDF-"), "a PDF")
		text := strings.Join(strings.Fields(pdfText(t, pdf)), " ")
		for _, want := range []string{"Practice: demo", "Alice Johnson", patientText, expanded + " Thanks!", "Hana Kim (hygienist)", "Messages: 2,"} {
			require.Contains(t, text, want)
		}
		require.Less(t, strings.Index(text, patientText), strings.Index(text, expanded), "oldest first")
	}}, {"unassign from the thread's menu, with the keyboard; it leaves the colleague's Assigned to me", func(t *testing.T) {
		hana.do(t, chromedp.Click(chromedp.CSS("#filter-mine")))
		hana.wait(t, "her assigned thread", threadWith(conv.Name)+` != null`)
		drLee.do(t, chromedp.Click(chromedp.CSS(`.thread-head [aria-label="Conversation actions"]`)))
		drLee.wait(t, "the thread menu, focused", `document.activeElement?.dataset.action === 'pin'`)
		drLee.do(t, chromedp.KeyEvent(kb.ArrowDown+kb.ArrowDown+kb.Enter)) // Pin, Mute, Assign…
		drLee.wait(t, "the dialog, the current assignee focused", `document.querySelector('.assign-current')?.textContent === 'Assigned to Hana Kim.' &&
			document.activeElement?.dataset.name === 'users/hana' && document.activeElement.getAttribute('aria-pressed') === 'true' &&
			!document.querySelector('#assign-clear').hidden`)
		drLee.do(t, chromedp.Click(chromedp.CSS("#assign-clear")))
		drLee.wait(t, "no assignee", `!document.querySelector('.assign-dialog') &&
			!`+threadWith(conv.Name)+`.querySelector('.tag-assignee') && !document.querySelector('.thread-sub')?.textContent.includes('Assigned')`)
		drLee.wait(t, "focus back on the menu button", `document.activeElement?.getAttribute('aria-label') === 'Conversation actions'`)
		hana.wait(t, "gone from Assigned to me", threadWith(conv.Name)+` == null &&
			document.querySelector('.list-status').textContent === 'No conversation is assigned to you.'`)
		var got struct{ Assignee string }
		require.Equal(t, 200, h.asNamed("dr-lee", "dentist", "Dr. Lee").do("GET", "/v1/"+conv.Name, nil, &got))
		require.Empty(t, got.Assignee)
	}}, {"patients see none of it", func(t *testing.T) {
		alice.wait(t, "no filters, no menu, no Templates", `document.querySelector('.sidebar') != null &&
			!document.querySelector('.filters') && !document.querySelector('[aria-label="Conversation actions"]') &&
			!document.querySelector('.tag') && !document.querySelector('.topnav a[href="#templates"]')`)
		alice.do(t, chromedp.SendKeys(chromedp.CSS(".composer-input"), "/"))
		alice.wait(t, "no slash menu", `!document.querySelector('.slash-menu')`)
		// A non-admin has no Templates page either.
		hana.do(t, chromedp.Navigate(b.base+"/#templates"))
		hana.wait(t, "still Chat", `document.querySelector('.sidebar') != null && !document.querySelector('.tpl-form') &&
			[...document.querySelectorAll('.topnav .nav-link')].map((a) => a.textContent).join() === 'Chat'`)
		var e apiError
		require.Equal(t, 403, h.as("alice", "patient").do("GET", "/v1/staff", nil, &e))
		require.Equal(t, 403, h.asNamed("hana", "hygienist", "Hana Kim").do("POST", "/v1/messageTemplates", map[string]any{"title": "x", "text": "y"}, &e))
	}}}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			return
		}
	}
	require.Empty(t, b.pageErrors(), "JavaScript errors in the pages")
}
