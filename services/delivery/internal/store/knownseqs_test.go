package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// postgresStores opens one PostgreSQL database and n stores on it, as n
// delivery replicas would be.
func postgresStores(t *testing.T, n int) (*sqldb.DB, []*store.Store) {
	t.Helper()
	db := testkit.OpenDB(t, testkit.Backends()[1])
	out := make([]*store.Store, n)
	for i := range out {
		s, err := store.New(context.Background(), db)
		require.NoError(t, err)
		out[i] = s
	}
	return db, out
}

// requireThread checks that thread conv holds exactly seqs 1..n, each
// message with one event in the outbox.
func requireThread(t *testing.T, db *sqldb.DB, s *store.Store, conv string, n int) {
	t.Helper()
	ctx := context.Background()
	list, err := s.List(ctx, "p1", conv, 0, 1000)
	require.NoError(t, err)
	require.Len(t, list, n)
	for i, m := range list {
		require.EqualValues(t, n-i, m.Seq, "gapless seqs")
	}
	var events int
	require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&events))
	require.Equal(t, n, events, "one event per message")
}

// Once a store has written a thread, it knows the thread's counter: its
// next sends carry their seqs and are written without reading them back
// (one round trip fewer), with the seqs and events a read back gives.
func TestKnownCountersWriteSendsWithTheirSeqs(t *testing.T) {
	db, ss := postgresStores(t, 1)
	s, ctx := ss[0], context.Background()
	for i := range 20 {
		m, created, err := s.Send(ctx, msg("c1", "users/u1", ids.New(), "hi"), oneEvent)
		require.NoError(t, err)
		require.True(t, created)
		require.EqualValues(t, i+1, m.Seq)
	}
	require.EqualValues(t, 19, store.SentKnown(s), "every send after the first knew its seq")
	require.Zero(t, store.KnownFailed(s))
	requireThread(t, db, s, "c1", 20)
}

// Another replica's send moves the counter: the store's next send, planned
// with the old value, fails as a whole and is written again reading its seq
// back. The thread is then written that way for a pause (replicas taking
// a thread's sends in turn would otherwise fail a write for every one),
// and with known seqs again after it.
func TestKnownCounterMovedByAnotherReplica(t *testing.T) {
	db, ss := postgresStores(t, 2)
	a, b, ctx := ss[0], ss[1], context.Background()
	now := time.Now()
	store.SetKnownClock(a, func() time.Time { return now })
	send := func(s *store.Store) int64 {
		m, created, err := s.Send(ctx, msg("c1", "users/u1", ids.New(), "hi"), oneEvent)
		require.NoError(t, err)
		require.True(t, created)
		return m.Seq
	}
	require.EqualValues(t, 1, send(a))
	require.EqualValues(t, 2, send(b))
	require.EqualValues(t, 3, send(a), "a knew 1: its write of seq 2 fails and goes again")
	require.EqualValues(t, 1, store.KnownFailed(a))
	for i := range 5 {
		require.EqualValues(t, 4+i, send(a))
	}
	require.EqualValues(t, 9, send(b))
	require.Zero(t, store.SentKnown(a), "paused: no known write")
	require.EqualValues(t, 1, store.KnownFailed(a), "paused: no failed write either")
	now = now.Add(store.KnownBackoff)
	require.EqualValues(t, 10, send(a), "after the pause a tries its stale value once more")
	require.EqualValues(t, 2, store.KnownFailed(a))
	now = now.Add(store.KnownBackoff)
	require.EqualValues(t, 11, send(a))
	require.EqualValues(t, 1, store.SentKnown(a), "a knew 10")
	requireThread(t, db, a, "c1", 11)
}

// A counter that moved without messages under it (not something delivery
// does; the statement must not trust the known value even so) fails the
// write instead of leaving a gap: nothing of it is kept, and the send is
// written again above the counter.
func TestKnownCounterIsCheckedNotTrusted(t *testing.T) {
	db, ss := postgresStores(t, 1)
	s, ctx := ss[0], context.Background()
	_, _, err := s.Send(ctx, msg("c1", "users/u1", ids.New(), "hi"), oneEvent)
	require.NoError(t, err)
	_, err = db.Exec(ctx, `UPDATE conversation_seq SET last_seq = 5 WHERE practice = 'p1' AND conversation_id = 'c1'`)
	require.NoError(t, err)
	m, _, err := s.Send(ctx, msg("c1", "users/u1", ids.New(), "hi"), oneEvent)
	require.NoError(t, err)
	require.EqualValues(t, 6, m.Seq)
	require.EqualValues(t, 1, store.KnownFailed(s))
	list, err := s.List(ctx, "p1", "c1", 0, 10)
	require.NoError(t, err)
	require.Len(t, list, 2, "seq 2 was not written")
	var events int
	require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&events))
	require.Equal(t, 2, events, "the failed write's event was not kept")
}

// A repeated request id on the known path fails the write (no ON CONFLICT
// there) and is answered as on the other: the first message, not created,
// no second event, and the counter not raised.
func TestKnownCounterWithARepeatedRequest(t *testing.T) {
	db, ss := postgresStores(t, 1)
	s, ctx := ss[0], context.Background()
	first, created, err := s.Send(ctx, msg("c1", "users/u1", "req-1", "hi"), oneEvent)
	require.NoError(t, err)
	require.True(t, created)
	_, _, err = s.Send(ctx, msg("c1", "users/u1", ids.New(), "hi"), oneEvent)
	require.NoError(t, err)
	again, created, err := s.Send(ctx, msg("c1", "users/u1", "req-1", "hi"), oneEvent)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, first.Seq, again.Seq)
	_, _, err = s.Send(ctx, msg("c1", "users/u1", "req-1", "other"), oneEvent)
	require.ErrorIs(t, err, domain.ErrRequestIDReused)
	m, _, err := s.Send(ctx, msg("c1", "users/u1", ids.New(), "hi"), oneEvent)
	require.NoError(t, err)
	require.EqualValues(t, 3, m.Seq)
	requireThread(t, db, s, "c1", 3)
}
