package allinone_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// A row changed in the audit database behind the service's back is served
// flagged TAMPERED through the gateway (GET /v1/auditEvents), its
// neighbours VERIFIED, and the web client's Audit log marks that row.
func TestAuditListFlagsTamperedRowInBrowser(t *testing.T) {
	chromiumPath(t) // skip before starting anything
	dir := t.TempDir()
	in := start(t, dir)
	h := harness{t: t, in: in}
	staff := h.as("dr-lee", "dentist")
	conv := staff.startConversation("alice")
	for i := range 3 {
		staff.send(conv.Name, fmt.Sprintf("note %d", i), reqID("audit-tamper", i))
	}

	type event struct {
		Index     int
		Actor     string
		Integrity string
	}
	adam := h.as("adam", "practice_admin")
	list := func() map[int]event {
		var page struct{ AuditEvents []event }
		require.Equal(t, 200, adam.do("GET", "/v1/auditEvents?pageSize=500", nil, &page))
		out := map[int]event{}
		for _, e := range page.AuditEvents {
			out[e.Index] = e
		}
		return out
	}
	// The log is written from the event stream: wait for the sends.
	require.Eventually(t, func() bool { return len(list()) >= 4 }, stepTimeout, 20*time.Millisecond)
	var cp struct{ TreeSize int }
	require.Equal(t, 200, adam.do("GET", "/v1/auditEvents:checkpoint", nil, &cp))
	require.GreaterOrEqual(t, cp.TreeSize, 4)
	before := list()
	for i := range 3 {
		require.Equal(t, "VERIFIED", before[i].Integrity, "record %d under the signed checkpoint", i)
	}

	// Someone with the data directory rewrites record 1's actor.
	ctx := context.Background()
	db, err := sqldb.Open(ctx, filepath.Join(dir, "audit.db"))
	require.NoError(t, err)
	defer db.Close()
	conn, err := db.Raw().Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	for _, q := range []string{`PRAGMA query_only = 0`, `DROP TRIGGER audit_events_no_update`,
		`UPDATE audit_events SET actor = 'users/mallory' WHERE practice = 'demo' AND idx = 1`} {
		_, err := conn.ExecContext(ctx, q)
		require.NoError(t, err, q)
	}

	after := list()
	require.Equal(t, "users/mallory", after[1].Actor)
	require.Equal(t, "TAMPERED", after[1].Integrity)
	require.Equal(t, "VERIFIED", after[0].Integrity)
	require.Equal(t, "VERIFIED", after[2].Integrity)

	b := newBrowser(t, "http://"+in.HTTPAddr)
	admin := b.tab(t, "adam")
	admin.signIn(t, "staff:adam", "demo")
	admin.do(t, chromedp.Click(chromedp.CSS(`.topnav a[href="#audit"]`)))
	admin.wait(t, "record 1 marked, its neighbours not", `(() => {
		const row = (i) => document.querySelector('.audit-table tbody tr[data-index="' + i + '"]');
		const r1 = row(1), r0 = row(0), r2 = row(2);
		return r1 && r0 && r2 && r1.classList.contains('tampered') && r1.dataset.integrity === 'TAMPERED' &&
			r1.querySelector('.audit-tampered')?.textContent.startsWith('Altered after it was logged') &&
			!r0.classList.contains('tampered') && !r0.querySelector('.audit-tampered') && r0.dataset.integrity === 'VERIFIED' &&
			!r2.classList.contains('tampered') && !r2.querySelector('.audit-tampered') && r2.dataset.integrity === 'VERIFIED' &&
			document.querySelectorAll('.audit-table tbody tr.tampered').length === 1;
	})()`)
	admin.do(t, chromedp.ScrollIntoView(chromedp.CSS(".audit-table tbody tr.tampered")))
	admin.screenshot(t, "audit-tampered-row")
	require.Empty(t, b.pageErrors())
}
