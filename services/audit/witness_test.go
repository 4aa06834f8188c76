package audit_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/tlog"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	auditv1 "github.com/clinicchat/clinicchat/proto/clinicchat/audit/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/audit"
	"github.com/clinicchat/clinicchat/services/platform/events"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

func (h *harness) servingStatus() healthpb.HealthCheckResponse_ServingStatus {
	resp, err := healthpb.NewHealthClient(h.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: audit.HealthService})
	require.NoError(h.t, err)
	return resp.GetStatus()
}

// TestTruncatedLogCaughtAtStartup: the newest records are deleted with their
// hashes and checkpoints while the service is down; at start-up the log no
// longer extends what the witness file saw, and the service says so (not
// serving, Verification names the first missing record).
func TestTruncatedLogCaughtAtStartup(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.stop()
	h.cfg.WitnessFile = filepath.Join(t.TempDir(), "witness.jsonl")
	h.start()
	require.NoError(t, h.svc.Verification())
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, h.servingStatus())

	for i := range 6 {
		m := events.Meta(dentist, "message.send", "conversations/c/messages/"+string(rune('a'+i)), time.Now())
		h.publish(natsx.SubjectMessageCreated, &deliveryv1.MessageCreated{Meta: m}, m)
	}
	h.waitFor(`action="message.send"`, 6)
	cp, err := h.client.GetCheckpoint(h.admin(), &auditv1.GetCheckpointRequest{})
	require.NoError(t, err)
	require.Equal(t, int32(6), cp.GetTreeSize())
	h.stop()

	ctx := context.Background()
	db, err := sqldb.Open(ctx, h.cfg.DatabaseDSN)
	require.NoError(t, err)
	conn, err := db.Raw().Conn(ctx)
	require.NoError(t, err)
	for _, q := range []string{`PRAGMA query_only = 0`, `DROP TRIGGER audit_events_no_delete`, `DROP TRIGGER audit_hashes_no_delete`,
		`DROP TRIGGER audit_checkpoints_no_delete`} {
		_, err := conn.ExecContext(ctx, q)
		require.NoError(t, err, q)
	}
	for _, q := range []struct {
		sql string
		arg int64
	}{{`DELETE FROM audit_events WHERE idx >= ?`, 4}, {`DELETE FROM audit_hashes WHERE hidx >= ?`, tlog.StoredHashCount(4)},
		{`DELETE FROM audit_checkpoints WHERE tree_size > ?`, 4}} {
		_, err := conn.ExecContext(ctx, q.sql, q.arg)
		require.NoError(t, err, q.sql)
	}
	require.NoError(t, conn.Close())
	require.NoError(t, db.Close())

	h.start()
	err = h.svc.Verification()
	require.Error(t, err, "caught at start-up")
	require.Contains(t, err.Error(), "first bad record 4")
	require.Contains(t, err.Error(), "records were removed from the end")
	require.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, h.servingStatus())
}
