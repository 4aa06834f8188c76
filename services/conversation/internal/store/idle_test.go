package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store/migrations"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// The idle sweep goes practice by practice (0010 dropped the index on
// state, last_activity): in chunks smaller than the idle threads, it
// archives every idle thread of every practice, and none of the others.
func TestArchiveIdleEveryPractice(t *testing.T) {
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			s := newStore(t, b)
			idle, fresh := map[string]bool{}, map[string]bool{}
			for p := range 4 {
				for i := range 5 {
					at := t0
					if i%2 == 1 {
						at = t0.Add(400 * 24 * time.Hour)
					}
					c, _, err := s.Create(ctx, domain.Conversation{Practice: fmt.Sprint("p", p), ID: ids.New(),
						PatientID: fmt.Sprint("pat", i), PatientDisplayName: "P", State: domain.Active, CreateTime: at}, none)
					require.NoError(t, err)
					if i%2 == 1 {
						fresh[c.Name()] = true
					} else {
						idle[c.Name()] = true
					}
				}
			}
			archived := map[string]bool{}
			sweep := func(limit int) int {
				n, err := s.ArchiveIdle(ctx, t0.Add(365*24*time.Hour), limit, func(c domain.Conversation) []domain.Event {
					require.Equal(t, domain.Archived, c.State)
					require.False(t, archived[c.Name()], "archived once")
					archived[c.Name()] = true
					return nil
				})
				require.NoError(t, err)
				return n
			}
			require.Equal(t, 5, sweep(5))
			require.Equal(t, 5, sweep(5))
			require.Equal(t, 2, sweep(5))
			require.Equal(t, 0, sweep(5), "nothing left")
			require.Equal(t, idle, archived)
			for p := range 4 {
				list, _, err := s.List(ctx, domain.ListQuery{Practice: fmt.Sprint("p", p), Viewer: staff, Limit: 10})
				require.NoError(t, err)
				for _, c := range list {
					require.True(t, fresh[c.Name()], c.Name())
				}
				require.Len(t, list, 2)
			}
		})
	}
}

// On SQLite the sweep's queries search conversations_by_activity once per
// practice, and conversations_idle is gone.
func TestArchiveIdleQueryPlan(t *testing.T) {
	ctx := context.Background()
	db := testkit.OpenDB(t, testkit.Backends()[0])
	_, err := store.New(ctx, db)
	require.NoError(t, err)
	var n int
	require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM sqlite_schema WHERE name = 'conversations_idle'`).Scan(&n))
	require.Zero(t, n)
	for _, q := range store.IdleQueries {
		all := queryPlan(ctx, t, db, q)
		require.Regexp(t, `SEARCH c USING (COVERING )?INDEX conversations_by_activity \(practice=\? AND state=\? AND last_activity<\?\)`, all, q)
		require.NotContains(t, all, "SCAN c", q)
		require.NotContains(t, all, "SCAN conversations", q)
	}
}

// A database made before conversations_idle was dropped (SQLite 0010,
// PostgreSQL 0008) loses the index, and its idle threads are archived.
func TestUpgradeDropsIdleIndex(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			version := "0010"
			if db.Dialect() == sqldb.Postgres {
				version = "0008"
			}
			testkit.MigrateBefore(t, db, migrations.FS, ".", version)
			t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
			require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
				for i, at := range []time.Time{t0, t0.Add(400 * 24 * time.Hour)} {
					if _, err := tx.Exec(ctx, `INSERT INTO conversations (practice, id, patient_id, patient_display_name, patient_name_key,
						state, create_time, last_activity) VALUES (?, ?, ?, 'X', 'x', ?, ?, ?)`,
						fmt.Sprint("p", i), fmt.Sprint("c", i), fmt.Sprint("pat", i), int(domain.Active), sqldb.Micros(at), sqldb.Micros(at)); err != nil {
						return err
					}
				}
				return nil
			}))
			s, err := store.New(ctx, db)
			require.NoError(t, err)
			var archived []string
			n, err := s.ArchiveIdle(ctx, t0.Add(365*24*time.Hour), 10, func(c domain.Conversation) []domain.Event {
				archived = append(archived, c.Name())
				return nil
			})
			require.NoError(t, err)
			require.Equal(t, 1, n)
			require.Equal(t, []string{"conversations/c0"}, archived)
			q := `SELECT COUNT(*) FROM sqlite_schema WHERE name = 'conversations_idle'`
			if db.Dialect() == sqldb.Postgres {
				q = `SELECT COUNT(*) FROM pg_indexes WHERE schemaname = current_schema() AND indexname = 'conversations_idle'`
			}
			var left int
			require.NoError(t, db.QueryRow(ctx, q).Scan(&left))
			require.Zero(t, left)
		})
	}
}
