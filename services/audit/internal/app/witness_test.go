package app_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinicchat/clinicchat/services/audit/internal/app"

	"github.com/clinicchat/clinicchat/services/audit/internal/witness"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

func withWitness(t *testing.T, e *env) *witness.File {
	w, err := witness.NewFile(filepath.Join(t.TempDir(), "witness.jsonl"))
	require.NoError(t, err)
	e.app.SetWitness(w)
	return w
}

// TestWitnessCatchesRewriteWithResignedCheckpoints: someone holding the
// data dir and the signing key rewrites record 7, recomputes every hash and
// re-signs the checkpoints. The log's own verify passes; the witness, which
// kept the checkpoint of size 12, catches it.
func TestWitnessCatchesRewriteWithResignedCheckpoints(t *testing.T) {
	b := testkit.Backends()[0]
	e := newEnv(t, b)
	w := withWitness(t, e)
	ingest(t, e, "p", 0, 12)
	_, err := e.app.Checkpoint(admin)
	require.NoError(t, err)
	seen, err := w.Latest(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(12), seen["p"].TreeSize, "the checkpoint reached the witness")
	require.True(t, e.app.CheckLogs(context.Background()).OK())

	conn := attacker(t, e.db)
	exec(t, conn, e.db, `UPDATE audit_events SET action = 'conversation.list' WHERE practice = 'p' AND idx = 7`)
	rehash(t, e, conn)
	exec(t, conn, e.db, `DELETE FROM audit_checkpoints WHERE practice = 'p'`)
	e.app.SetWitness(nil) // the attacker's re-signing does not reach the witness
	_, err = e.app.Checkpoint(admin)
	require.NoError(t, err)
	res, err := e.app.Verify(admin, nil)
	require.NoError(t, err)
	require.True(t, res.Valid, "re-signed with the key, the log alone verifies")

	e.app.SetWitness(w)
	h := e.app.CheckLogs(context.Background())
	require.False(t, h.OK())
	require.Contains(t, h.Problems["p"], "first bad record 7")
	require.Contains(t, h.Problems["p"], "differs from what the witness saw")
}

// TestVerifyNamesRecord100WhenRecord100Changed: record 100 of 130 is
// rewritten with every hash recomputed and the checkpoints re-signed; verify
// (which compares against the witness's leaves) names record 100, not the
// range since the last checkpoint that still matched.
func TestVerifyNamesRecord100WhenRecord100Changed(t *testing.T) {
	b := testkit.Backends()[0]
	e := newEnv(t, b)
	w := withWitness(t, e)
	ingest(t, e, "p", 0, 60)
	_, err := e.app.Checkpoint(admin)
	require.NoError(t, err)
	ingest(t, e, "p", 60, 130)
	_, err = e.app.Checkpoint(admin)
	require.NoError(t, err)

	conn := attacker(t, e.db)
	exec(t, conn, e.db, `UPDATE audit_events SET outcome = 'DENIED' WHERE practice = 'p' AND idx = 100`)
	rehash(t, e, conn)
	exec(t, conn, e.db, `DELETE FROM audit_checkpoints WHERE practice = 'p'`)
	e.app.SetWitness(nil)
	_, err = e.app.Checkpoint(admin) // re-signed with the key
	require.NoError(t, err)
	e.app.SetWitness(w)

	res, err := e.app.Verify(admin, nil)
	require.NoError(t, err)
	require.False(t, res.Valid)
	require.Equal(t, int64(100), res.FirstBadIndex, res.Reason)
	require.Equal(t, int64(100), res.Checked)
	require.Contains(t, res.Reason, "record 100 differs from what the witness saw")
}

// TestTruncatedLogCaughtAtStartup: rows, hashes and checkpoints past record
// 8 are deleted together; the start-up check (CheckLogs) finds the log
// shorter than what the witness saw.
func TestTruncatedLogCaughtAtStartup(t *testing.T) {
	b := testkit.Backends()[0]
	e := newEnv(t, b)
	w := withWitness(t, e)
	ingest(t, e, "p", 0, 12)
	_, err := e.app.Checkpoint(admin)
	require.NoError(t, err)

	conn := attacker(t, e.db)
	exec(t, conn, e.db, `DELETE FROM audit_events WHERE practice = 'p' AND idx >= 9`)
	exec(t, conn, e.db, `DELETE FROM audit_hashes WHERE practice = 'p' AND hidx >= ?`, tlog.StoredHashCount(9))
	exec(t, conn, e.db, `DELETE FROM audit_checkpoints WHERE practice = 'p' AND tree_size > 9`)
	e.app.SetWitness(nil)
	res, err := e.app.Verify(admin, nil)
	require.NoError(t, err)
	require.True(t, res.Valid, "without the witness the shorter log looks whole")
	e.app.SetWitness(w)

	h := e.app.CheckLogs(context.Background())
	require.False(t, h.OK())
	require.Contains(t, h.Problems["p"], "first bad record 9")
	require.Contains(t, h.Problems["p"], "records were removed from the end")
}

// TestSigningKeyRotationKeepsOldCheckpointsVerifiable: after the operator
// rotates the signing key, checkpoints signed with the old one verify when
// its verifier key is kept (--audit-previous-verifier-keys), and not
// otherwise.
func TestSigningKeyRotationKeepsOldCheckpointsVerifiable(t *testing.T) {
	b := testkit.Backends()[0]
	e := newEnv(t, b)
	ingest(t, e, "p", 0, 5)
	_, err := e.app.Checkpoint(admin)
	require.NoError(t, err)

	rotated := app.New(e.st, newKey(t), testkit.Logger(t))
	res, err := rotated.Verify(admin, nil)
	require.NoError(t, err)
	require.False(t, res.Valid)
	require.Contains(t, res.Reason, "the checkpoint of size 5 is not genuine")

	rotated.SetPreviousVerifiers([]note.Verifier{e.key.Verifier})
	ingest(t, e, "p", 5, 9)
	_, err = rotated.Checkpoint(admin) // signed with the new key, extending the old checkpoint
	require.NoError(t, err)
	res, err = rotated.Verify(admin, nil)
	require.NoError(t, err)
	require.True(t, res.Valid, res.Reason)
	require.Equal(t, int64(9), res.TreeSize)
}
