package app_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clinicchat/clinicchat/services/audit/internal/app"
	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
	"github.com/clinicchat/clinicchat/services/audit/internal/signer"
	"github.com/clinicchat/clinicchat/services/audit/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

type env struct {
	app *app.App
	st  *store.Store
	db  *sqldb.DB
	key *signer.Key
}

func newKey(t testing.TB) *signer.Key {
	skey, _, err := note.GenerateKey(rand.Reader, "test-audit")
	require.NoError(t, err)
	k, err := signer.Parse(skey)
	require.NoError(t, err)
	return k
}

func newEnv(t *testing.T, b testkit.Backend) *env {
	db := testkit.OpenDB(t, b)
	st, err := store.New(context.Background(), db)
	require.NoError(t, err)
	k := newKey(t)
	return &env{app: app.New(st, k, testkit.Logger(t)), st: st, db: db, key: k}
}

func forEachBackend(t *testing.T, f func(t *testing.T, e *env)) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) { f(t, newEnv(t, b)) })
	}
}

func as(role, practice string) context.Context {
	return auth.WithIdentity(context.Background(), auth.Identity{Subject: "u-" + role, Role: role, Practice: practice})
}

var admin = as(auth.RolePracticeAdmin, "p")

var t0 = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

func ingest(t *testing.T, e *env, practice string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		require.NoError(t, e.app.Ingest(context.Background(), natsx.SubjectDeliveryAccess, domain.Entry{
			EventID: fmt.Sprintf("%s-e%d", practice, i), Time: t0.Add(time.Duration(i) * time.Second), Practice: practice,
			Actor: "users/u", ActorRole: "dentist", Action: "conversation.view", Resource: fmt.Sprintf("conversations/c%d", i%3),
			Outcome: domain.OutcomeAllowed,
		}))
	}
}

func code(err error) codes.Code { return status.Code(err) }

func TestOnlyPracticeAdminsRead(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testkit.Backends()[0])
	ingest(t, e, "p", 0, 3)
	for _, role := range []string{auth.RoleDentist, auth.RoleHygienist, auth.RoleAssistant, auth.RoleFrontDesk, auth.RolePatient, auth.RoleSystem, ""} {
		ctx := as(role, "p")
		_, err := e.app.List(ctx, "", 0, "")
		require.Equal(t, codes.PermissionDenied, code(err), role)
		require.Equal(t, codes.PermissionDenied, code(e.app.Export(ctx, "", func(domain.Record, app.Integrity) error { return nil })), role)
		_, err = e.app.Verify(ctx, nil)
		require.Equal(t, codes.PermissionDenied, code(err), role)
		_, err = e.app.Checkpoint(ctx)
		require.Equal(t, codes.PermissionDenied, code(err), role)
		_, _, err = e.app.InclusionProof(ctx, 0, 0)
		require.Equal(t, codes.PermissionDenied, code(err), role)
		_, err = e.app.ConsistencyProof(ctx, 1, 0)
		require.Equal(t, codes.PermissionDenied, code(err), role)
	}
	_, err := e.app.List(context.Background(), "", 0, "")
	require.Equal(t, codes.Unauthenticated, code(err))

	// Another practice's administrator sees an empty log, never this one.
	p, err := e.app.List(as(auth.RolePracticeAdmin, "q"), "", 0, "")
	require.NoError(t, err)
	require.Empty(t, p.Records)
	p, err = e.app.List(admin, "", 0, "")
	require.NoError(t, err)
	require.Len(t, p.Records, 3)
}

func TestIngestPolicyAndDuplicates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testkit.Backends()[0])
	ctx := context.Background()
	base := domain.Entry{EventID: "e1", Time: t0, Practice: "p", Actor: "users/u", ActorRole: "dentist", Action: "message.send", Resource: "conversations/c/messages/m"}
	require.NoError(t, e.app.Ingest(ctx, natsx.SubjectMessageCreated, base))
	require.NoError(t, e.app.Ingest(ctx, natsx.SubjectMessageCreated, base)) // redelivery
	n := base
	n.EventID = "e2"
	require.NoError(t, e.app.Ingest(ctx, natsx.SubjectNotification, n))
	echo := domain.Entry{EventID: "e3", Time: t0, Practice: "p", Actor: domain.SystemActor, ActorRole: "system", Action: "message.status", Resource: "conversations/c/messages/m"}
	require.NoError(t, e.app.Ingest(ctx, natsx.SubjectMessageUpdated, echo))
	archive := domain.Entry{EventID: "e4", Time: t0, Practice: "p", Actor: domain.SystemActor, ActorRole: "system", Action: "conversation.archive", Resource: "conversations/c"}
	require.NoError(t, e.app.Ingest(ctx, natsx.SubjectConversationUpdated, archive))
	p, err := e.app.List(admin, "", 0, "")
	require.NoError(t, err)
	var got []string
	for _, r := range p.Records {
		got = append(got, r.EventID)
	}
	require.ElementsMatch(t, []string{"e1", "e4"}, got)
}

func TestListPages(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testkit.Backends()[0])
	ingest(t, e, "p", 0, 25)
	var got []int64
	tok := ""
	for {
		p, err := e.app.List(admin, `resource="conversations/c1"`, 3, tok)
		require.NoError(t, err)
		for _, r := range p.Records {
			got = append(got, r.Index)
		}
		if p.NextPageToken == "" {
			break
		}
		tok = p.NextPageToken
	}
	require.Equal(t, []int64{22, 19, 16, 13, 10, 7, 4, 1}, got, "newest first")

	p, err := e.app.List(admin, "", 3, "")
	require.NoError(t, err)
	// A token with another filter, from another practice, or made up is refused.
	for _, bad := range []struct {
		ctx    context.Context
		filter string
		token  string
	}{
		{admin, `actor="users/u"`, p.NextPageToken},
		{as(auth.RolePracticeAdmin, "q"), "", p.NextPageToken},
		{admin, "", "not-a-token"},
		{admin, "", "djEuMS4yLjM"},
	} {
		_, err := e.app.List(bad.ctx, bad.filter, 3, bad.token)
		require.Equal(t, codes.InvalidArgument, code(err))
	}
	_, err = e.app.List(admin, "", -1, "")
	require.Equal(t, codes.InvalidArgument, code(err))
	_, err = e.app.List(admin, `bogus="x"`, 0, "")
	require.Equal(t, codes.InvalidArgument, code(err))
	p, err = e.app.List(admin, "", 1000, "")
	require.NoError(t, err)
	require.Len(t, p.Records, 25)

	var exported []int64
	require.NoError(t, e.app.Export(admin, `time>="2026-03-01T09:00:20Z"`, func(r domain.Record, v app.Integrity) error {
		exported = append(exported, r.Index)
		require.Equal(t, app.IntegrityUnverified, v, "intact, and no checkpoint yet")
		return nil
	}))
	require.Equal(t, []int64{20, 21, 22, 23, 24}, exported, "oldest first")
}

func TestCheckpointsAndProofs(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		// An empty log has a signed checkpoint of size 0.
		c0, err := e.app.Checkpoint(admin)
		require.NoError(t, err)
		require.Zero(t, c0.Size)

		ingest(t, e, "p", 0, 9)
		c, err := e.app.Checkpoint(admin)
		require.NoError(t, err)
		require.Equal(t, int64(9), c.Size)
		again, err := e.app.Checkpoint(admin)
		require.NoError(t, err)
		require.Equal(t, c, again, "no new checkpoint while the log has not grown")

		// The note verifies with the public key and states size, root, practice.
		v, err := note.NewVerifier(e.key.VerifierKey)
		require.NoError(t, err)
		n, err := note.Open([]byte(c.Note), note.VerifierList(v))
		require.NoError(t, err)
		practice, tree, err := domain.ParseCheckpointText(n.Text)
		require.NoError(t, err)
		require.Equal(t, "p", practice)
		require.Equal(t, tlog.Tree{N: 9, Hash: c.Root}, tree)

		recs, err := e.st.Range(context.Background(), "p", 0, 9)
		require.NoError(t, err)
		for i := range int64(9) {
			p, size, err := e.app.InclusionProof(admin, i, 0)
			require.NoError(t, err)
			require.Equal(t, int64(9), size)
			require.NoError(t, tlog.CheckRecord(p, 9, c.Root, i, recs[i].LeafHash()))
		}

		ingest(t, e, "p", 9, 20)
		c2, err := e.app.Checkpoint(admin)
		require.NoError(t, err)
		require.Equal(t, int64(20), c2.Size)
		p, err := e.app.ConsistencyProof(admin, 9, 0)
		require.NoError(t, err)
		require.NoError(t, tlog.CheckTree(p, 20, c2.Root, 9, c.Root))
		ip, size, err := e.app.InclusionProof(admin, 3, 9)
		require.NoError(t, err)
		require.Equal(t, int64(9), size)
		require.NoError(t, tlog.CheckRecord(ip, 9, c.Root, 3, recs[3].LeafHash()))

		for _, bad := range [][2]int64{{-1, 0}, {20, 0}, {5, 5}, {0, 21}, {0, -1}} {
			_, _, err := e.app.InclusionProof(admin, bad[0], bad[1])
			require.Equal(t, codes.InvalidArgument, code(err), bad)
		}
		for _, bad := range [][2]int64{{0, 0}, {21, 0}, {10, 9}, {1, 21}} {
			_, err := e.app.ConsistencyProof(admin, bad[0], bad[1])
			require.Equal(t, codes.InvalidArgument, code(err), bad)
		}
		_, err = e.app.ConsistencyProof(as(auth.RolePracticeAdmin, "empty"), 1, 0)
		require.Equal(t, codes.InvalidArgument, code(err))
	})
}

func TestRunCheckpointsSignsGrownLogs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testkit.Backends()[0])
	ingest(t, e, "p", 0, 4)
	ingest(t, e, "q", 0, 2)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- e.app.RunCheckpoints(ctx, 10*time.Millisecond) }()
	latest := func(p string) int64 {
		c, ok, err := e.st.LatestCheckpoint(context.Background(), p)
		require.NoError(t, err)
		if !ok {
			return -1
		}
		return c.Size
	}
	require.Eventually(t, func() bool { return latest("p") == 4 && latest("q") == 2 }, 10*time.Second, 10*time.Millisecond)
	ingest(t, e, "p", 4, 6)
	require.Eventually(t, func() bool { return latest("p") == 6 }, 10*time.Second, 10*time.Millisecond)
	ingest(t, e, "q", 2, 3)
	cancel()
	require.NoError(t, <-done)
	require.Equal(t, int64(3), latest("q"), "a last checkpoint on the way out")
}

// attacker is a direct database connection of someone who turns the
// append-only triggers off.
func attacker(t *testing.T, db *sqldb.DB) *sql.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := db.Raw().Conn(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	if db.Dialect() == sqldb.SQLite {
		_, err := conn.ExecContext(ctx, `PRAGMA query_only = 0`)
		require.NoError(t, err)
		t.Cleanup(func() { _, _ = conn.ExecContext(ctx, `PRAGMA query_only = 1`) })
		for _, tr := range []string{"audit_events_no_update", "audit_events_no_delete", "audit_hashes_no_update", "audit_hashes_no_delete",
			"audit_checkpoints_no_update", "audit_checkpoints_no_delete"} {
			_, err := conn.ExecContext(ctx, `DROP TRIGGER `+tr)
			require.NoError(t, err)
		}
		return conn
	}
	for _, tbl := range []string{"audit_events", "audit_hashes", "audit_checkpoints"} {
		_, err := conn.ExecContext(ctx, `ALTER TABLE `+tbl+` DISABLE TRIGGER USER`)
		require.NoError(t, err)
	}
	return conn
}

func exec(t *testing.T, conn *sql.Conn, db *sqldb.DB, q string, args ...any) {
	t.Helper()
	_, err := conn.ExecContext(context.Background(), db.Rebind(q), args...)
	require.NoError(t, err, q)
}

// rehash rewrites every stored tree hash of practice p from its records, as
// an attacker who knows the algorithm would after changing a record.
func rehash(t *testing.T, e *env, conn *sql.Conn) {
	t.Helper()
	n, err := e.st.Size(context.Background(), "p")
	require.NoError(t, err)
	recs, err := e.st.Range(context.Background(), "p", 0, n)
	require.NoError(t, err)
	exec(t, conn, e.db, `DELETE FROM audit_hashes WHERE practice = 'p'`)
	f := domain.NewFrontier()
	for _, r := range recs {
		leaf := r.LeafHash()
		exec(t, conn, e.db, `UPDATE audit_events SET leaf_hash = ? WHERE practice = 'p' AND idx = ?`, leaf[:], r.Index)
		hs, err := f.Add(leaf)
		require.NoError(t, err)
		for j, h := range hs {
			exec(t, conn, e.db, `INSERT INTO audit_hashes (practice, hidx, hash) VALUES ('p', ?, ?)`, tlog.StoredHashIndex(0, r.Index)+int64(j), h[:])
		}
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	const size = 12
	tests := []struct {
		name    string
		kept    bool // verify against the checkpoint kept before the tampering
		tamper  func(t *testing.T, e *env, conn *sql.Conn)
		bad     int64
		checked int64
		reason  string
	}{
		{
			name: "change a field",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				exec(t, conn, e.db, `UPDATE audit_events SET actor = 'users/mallory' WHERE practice = 'p' AND idx = 5`)
			},
			bad: 5, reason: "record 5 does not match its leaf hash",
		},
		{
			name: "change the outcome and the leaf hash",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				recs, err := e.st.Range(context.Background(), "p", 6, 7)
				require.NoError(t, err)
				r := recs[0]
				r.Outcome = domain.OutcomeDenied
				h := r.LeafHash()
				exec(t, conn, e.db, `UPDATE audit_events SET outcome = 'DENIED', leaf_hash = ? WHERE practice = 'p' AND idx = 6`, h[:])
			},
			bad: 6, reason: "the stored tree hashes do not match record 6",
		},
		{
			name: "delete a row",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				exec(t, conn, e.db, `DELETE FROM audit_events WHERE practice = 'p' AND idx = 4`)
			},
			bad: 4, reason: "record 4 is missing",
		},
		{
			name: "delete a row and renumber the rest",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				exec(t, conn, e.db, `DELETE FROM audit_events WHERE practice = 'p' AND idx = 4`)
				for i := 5; i < size; i++ {
					exec(t, conn, e.db, `UPDATE audit_events SET idx = ? WHERE practice = 'p' AND idx = ?`, i-1, i)
				}
			},
			bad: 4, reason: "record 4 does not match its leaf hash",
		},
		{
			name: "swap two rows",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				exec(t, conn, e.db, `UPDATE audit_events SET idx = -1 WHERE practice = 'p' AND idx = 3`)
				exec(t, conn, e.db, `UPDATE audit_events SET idx = 3 WHERE practice = 'p' AND idx = 8`)
				exec(t, conn, e.db, `UPDATE audit_events SET idx = 8 WHERE practice = 'p' AND idx = -1`)
			},
			bad: 3, reason: "record 3 does not match its leaf hash",
		},
		{
			name: "swap two rows' contents",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				exec(t, conn, e.db, `UPDATE audit_events SET resource = 'conversations/c1' WHERE practice = 'p' AND idx = 9`)
				exec(t, conn, e.db, `UPDATE audit_events SET resource = 'conversations/c0' WHERE practice = 'p' AND idx = 10`)
			},
			bad: 9, reason: "record 9 does not match its leaf hash",
		},
		{
			name: "truncate the tail: rows only",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				exec(t, conn, e.db, `DELETE FROM audit_events WHERE practice = 'p' AND idx >= 9`)
			},
			bad: 9, checked: 9, reason: "a signed checkpoint has 12",
		},
		{
			name: "truncate the tail: rows, hashes and checkpoints, against the kept checkpoint",
			kept: true,
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				exec(t, conn, e.db, `DELETE FROM audit_events WHERE practice = 'p' AND idx >= 9`)
				exec(t, conn, e.db, `DELETE FROM audit_hashes WHERE practice = 'p' AND hidx >= ?`, tlog.StoredHashCount(9))
				exec(t, conn, e.db, `DELETE FROM audit_checkpoints WHERE practice = 'p' AND tree_size > 9`)
			},
			bad: 9, checked: 9, reason: "the kept checkpoint has 12: records were removed from the end",
		},
		{
			name: "truncate the tail: rows and checkpoints, not hashes",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				exec(t, conn, e.db, `DELETE FROM audit_events WHERE practice = 'p' AND idx >= 10`)
				exec(t, conn, e.db, `DELETE FROM audit_checkpoints WHERE practice = 'p' AND tree_size > 10`)
			},
			bad: 10, checked: 10, reason: "tree hashes go beyond the last record",
		},
		{
			name: "rewrite a record and every hash consistently",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				exec(t, conn, e.db, `UPDATE audit_events SET action = 'conversation.list' WHERE practice = 'p' AND idx = 7`)
				rehash(t, e, conn)
			},
			// Only the signed checkpoints can tell; the one of size 5 still matches.
			bad: 5, reason: "records 5 to 11 do not match the signed checkpoint of size 12",
		},
		{
			name: "rewrite consistently and replace the checkpoints' roots",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				exec(t, conn, e.db, `UPDATE audit_events SET action = 'conversation.list' WHERE practice = 'p' AND idx = 1`)
				rehash(t, e, conn)
				for _, n := range []int64{5, size} {
					root, err := tlog.TreeHash(n, e.st.HashReader(context.Background(), "p"))
					require.NoError(t, err)
					exec(t, conn, e.db, `UPDATE audit_checkpoints SET root_hash = ? WHERE practice = 'p' AND tree_size = ?`, root[:], n)
				}
			},
			bad: 0, reason: "the checkpoint of size 5 is not genuine",
		},
	}
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					e := newEnv(t, b)
					ingest(t, e, "p", 0, 5)
					_, err := e.app.Checkpoint(admin)
					require.NoError(t, err)
					ingest(t, e, "p", 5, size)
					kept, err := e.app.Checkpoint(admin)
					require.NoError(t, err)
					ingest(t, e, "other", 0, 3) // another practice's log is not involved

					res, err := e.app.Verify(admin, nil)
					require.NoError(t, err)
					require.True(t, res.Valid, res.Reason)
					require.Equal(t, app.VerifyResult{Valid: true, Checked: size, TreeSize: size, Root: kept.Root}, res)

					tt.tamper(t, e, attacker(t, e.db))

					var k *app.Kept
					if tt.kept {
						k = &app.Kept{Size: kept.Size, Root: kept.Root}
					}
					res, err = e.app.Verify(admin, k)
					require.NoError(t, err)
					require.False(t, res.Valid)
					require.Equal(t, tt.bad, res.FirstBadIndex, res.Reason)
					require.Contains(t, res.Reason, tt.reason)
					checked := tt.checked
					if checked == 0 {
						checked = tt.bad
					}
					require.Equal(t, checked, res.Checked)

					// The other practice's log still verifies.
					res, err = e.app.Verify(as(auth.RolePracticeAdmin, "other"), nil)
					require.NoError(t, err)
					require.True(t, res.Valid, res.Reason)
				})
			}
		})
	}
}

func TestVerifyAgainstKeptCheckpoint(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ingest(t, e, "p", 0, 6)
		c, err := e.app.Checkpoint(admin)
		require.NoError(t, err)
		ingest(t, e, "p", 6, 10)
		res, err := e.app.Verify(admin, &app.Kept{Size: c.Size, Root: c.Root})
		require.NoError(t, err)
		require.True(t, res.Valid, res.Reason)
		require.Equal(t, int64(10), res.TreeSize)

		other := tlog.RecordHash([]byte("forged"))
		res, err = e.app.Verify(admin, &app.Kept{Size: c.Size, Root: other})
		require.NoError(t, err)
		require.False(t, res.Valid)
		require.Zero(t, res.FirstBadIndex)
		require.Contains(t, res.Reason, "do not match the kept checkpoint of size 6")
	})
}

func TestParseKept(t *testing.T) {
	t.Parallel()
	h := tlog.RecordHash([]byte("x"))
	k, err := app.ParseKept(3, h.String())
	require.NoError(t, err)
	require.Equal(t, &app.Kept{Size: 3, Root: h}, k)
	k, err = app.ParseKept(0, "")
	require.NoError(t, err)
	require.Nil(t, k)
	for _, bad := range []struct {
		size int64
		root string
	}{{-1, h.String()}, {3, ""}, {3, "not base64!"}, {3, "AAAA"}} {
		_, err := app.ParseKept(bad.size, bad.root)
		require.Equal(t, codes.InvalidArgument, code(err), bad)
	}
}

// Verification while events keep arriving never mistakes an append for
// tampering.
func TestVerifyDuringAppends(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ingest(t, e, "p", 0, 3)
		_, err := e.app.Checkpoint(admin)
		require.NoError(t, err)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 3; i < 80; i++ {
				err := e.app.Ingest(context.Background(), natsx.SubjectDeliveryAccess, domain.Entry{
					EventID: fmt.Sprintf("p-e%d", i), Time: t0, Practice: "p", Actor: "users/u", ActorRole: "dentist",
					Action: "conversation.view", Resource: "conversations/c"})
				if err == nil && i%10 == 0 {
					_, err = e.app.Checkpoint(admin)
				}
				if err != nil {
					t.Error(err) // not require: this is not the test's goroutine
					return
				}
			}
		}()
		for running := true; running; {
			select {
			case <-done:
				running = false
			default:
			}
			res, err := e.app.Verify(admin, nil)
			require.NoError(t, err)
			require.True(t, res.Valid, res.Reason)
		}
		res, err := e.app.Verify(admin, nil)
		require.NoError(t, err)
		require.True(t, res.Valid, res.Reason)
		require.Equal(t, int64(80), res.TreeSize)
	})
}

func TestVerifyEmptyAndSmallLogs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testkit.Backends()[0])
	res, err := e.app.Verify(admin, nil)
	require.NoError(t, err)
	require.True(t, res.Valid)
	require.Zero(t, res.TreeSize)
	_, err = e.app.Checkpoint(admin) // size 0
	require.NoError(t, err)
	for i := range 3 {
		ingest(t, e, "p", i, i+1)
		_, err = e.app.Checkpoint(admin)
		require.NoError(t, err)
		res, err = e.app.Verify(admin, nil)
		require.NoError(t, err)
		require.True(t, res.Valid, res.Reason)
		require.Equal(t, int64(i+1), res.Checked)
	}
	cps, err := e.st.Checkpoints(context.Background(), "p")
	require.NoError(t, err)
	require.Len(t, cps, 4)
}

// Lists flag tampered rows: each listed record carries a verdict, and a row
// changed in the database is TAMPERED while its neighbours stay VERIFIED
// (covered by the signed checkpoint) or UNVERIFIED (logged after it).
func TestListFlagsTamperedRows(t *testing.T) {
	const signedSize, size = 12, 15
	verdicts := func(t *testing.T, e *env) map[int64]app.Integrity {
		t.Helper()
		p, err := e.app.List(admin, "", app.MaxPageSize, "")
		require.NoError(t, err)
		require.Len(t, p.Integrity, len(p.Records))
		out := map[int64]app.Integrity{}
		for i, r := range p.Records {
			out[r.Index] = p.Integrity[i]
		}
		return out
	}
	tests := []struct {
		name     string
		tamper   func(t *testing.T, e *env, conn *sql.Conn)
		tampered []int64
		// all: every other record's verdict is unknown (the whole tree was
		// rewritten); only the tampered ones are asserted.
		all bool
	}{
		{name: "untouched"},
		{
			name: "change a field",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				exec(t, conn, e.db, `UPDATE audit_events SET actor = 'users/mallory' WHERE practice = 'p' AND idx = 5`)
			},
			tampered: []int64{5},
		},
		{
			name: "change the outcome and the leaf hash",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				recs, err := e.st.Range(context.Background(), "p", 6, 7)
				require.NoError(t, err)
				r := recs[0]
				r.Outcome = domain.OutcomeDenied
				h := r.LeafHash()
				exec(t, conn, e.db, `UPDATE audit_events SET outcome = 'DENIED', leaf_hash = ? WHERE practice = 'p' AND idx = 6`, h[:])
			},
			tampered: []int64{6},
		},
		{
			name: "change a row not yet under a checkpoint",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				exec(t, conn, e.db, `UPDATE audit_events SET detail = 'x' WHERE practice = 'p' AND idx = 13`)
			},
			tampered: []int64{13},
		},
		{
			name: "swap two rows",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				exec(t, conn, e.db, `UPDATE audit_events SET idx = -1 WHERE practice = 'p' AND idx = 3`)
				exec(t, conn, e.db, `UPDATE audit_events SET idx = 3 WHERE practice = 'p' AND idx = 8`)
				exec(t, conn, e.db, `UPDATE audit_events SET idx = 8 WHERE practice = 'p' AND idx = -1`)
			},
			tampered: []int64{3, 8},
		},
		{
			name: "rewrite a record and every hash consistently",
			tamper: func(t *testing.T, e *env, conn *sql.Conn) {
				exec(t, conn, e.db, `UPDATE audit_events SET action = 'conversation.list' WHERE practice = 'p' AND idx = 7`)
				rehash(t, e, conn)
			},
			tampered: []int64{7}, all: true,
		},
	}
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					e := newEnv(t, b)
					ingest(t, e, "p", 0, signedSize)
					_, err := e.app.Checkpoint(admin)
					require.NoError(t, err)
					ingest(t, e, "p", signedSize, size)
					if tt.tamper != nil {
						tt.tamper(t, e, attacker(t, e.db))
					}
					got := verdicts(t, e)
					require.Len(t, got, size)
					// The export gives each record the same verdict.
					require.NoError(t, e.app.Export(admin, "", func(r domain.Record, v app.Integrity) error {
						require.Equal(t, got[r.Index], v, "exported record %d", r.Index)
						return nil
					}))
					for i := range int64(size) {
						want := app.IntegrityVerified
						if i >= signedSize {
							want = app.IntegrityUnverified
						}
						if slices.Contains(tt.tampered, i) {
							want = app.IntegrityTampered
						} else if tt.all {
							continue
						}
						require.Equal(t, want, got[i], "record %d", i)
					}
				})
			}
		})
	}
}

// A checkpoint whose signature does not verify vouches for nothing: the
// records it covered are UNVERIFIED, never VERIFIED.
func TestListWithForgedCheckpointVerifiesNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ingest(t, e, "p", 0, 4)
		_, err := e.app.Checkpoint(admin)
		require.NoError(t, err)
		exec(t, attacker(t, e.db), e.db, `UPDATE audit_checkpoints SET note = 'forged' WHERE practice = 'p'`)
		p, err := e.app.List(admin, "", 0, "")
		require.NoError(t, err)
		require.Len(t, p.Integrity, 4)
		for _, v := range p.Integrity {
			require.Equal(t, app.IntegrityUnverified, v)
		}
	})
}

// The checkpoint age counts from the first record no checkpoint covers and
// returns to zero once one is signed.
func TestCheckpointAgeFollowsUncoveredRecords(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testkit.Backends()[0])
	require.Zero(t, e.app.CheckpointAge(), "nothing waits in an empty log")
	ingest(t, e, "p", 0, 3)
	require.Positive(t, e.app.CheckpointAge(), "three records wait for a checkpoint")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- e.app.RunCheckpoints(ctx, 10*time.Millisecond) }()
	require.Eventually(t, func() bool { return e.app.CheckpointAge() == 0 }, 10*time.Second, 10*time.Millisecond)
	c, ok, err := e.st.LatestCheckpoint(context.Background(), "p")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(3), c.Size, "zero once a checkpoint covers every record")
	cancel()
	require.NoError(t, <-done)
}
