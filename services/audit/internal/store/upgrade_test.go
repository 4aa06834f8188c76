package store_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
	"github.com/clinicchat/clinicchat/services/audit/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// A log written before 0002 (SQLite: WITHOUT ROWID tables) reads back
// record for record, keeps growing as one tree and stays append-only.
func TestUpgradeKeepsTheLog(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			testkit.MigrateBefore(t, db, os.DirFS("."), "migrations", "0002")

			// Three records and their stored hashes, as the old schema held them.
			var stored []tlog.Hash
			reader := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
				out := make([]tlog.Hash, len(idx))
				for i, x := range idx {
					out[i] = stored[x]
				}
				return out, nil
			})
			var leaves []tlog.Hash
			require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error {
				for i := range 3 {
					e := entry("p", fmt.Sprint("e", i), i).Normalize()
					r := domain.Record{Entry: e, Index: int64(i)}
					r.Hash = r.LeafHash()
					leaves = append(leaves, r.Hash)
					hs, err := tlog.StoredHashesForRecordHash(int64(i), r.Hash, reader)
					if err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `INSERT INTO audit_events (practice, idx, event_id, time_us, actor, actor_role, action,
						resource, outcome, detail, leaf_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, e.Practice, i, e.EventID,
						e.Time.UnixMicro(), e.Actor, e.ActorRole, e.Action, e.Resource, string(e.Outcome), e.Detail, r.Hash[:]); err != nil {
						return err
					}
					for _, h := range hs {
						if _, err := tx.Exec(ctx, `INSERT INTO audit_hashes (practice, hidx, hash) VALUES (?, ?, ?)`,
							"p", int64(len(stored)), h[:]); err != nil {
							return err
						}
						stored = append(stored, h)
					}
				}
				return nil
			}))

			st, err := store.New(ctx, db)
			require.NoError(t, err)
			recs, err := st.Range(ctx, "p", 0, 10)
			require.NoError(t, err)
			require.Len(t, recs, 3)
			for i, r := range recs {
				require.True(t, r.Matches())
				require.Equal(t, entry("p", fmt.Sprint("e", i), i).Normalize(), r.Entry)
			}
			r, added, err := st.Append(ctx, entry("p", "e3", 3))
			require.NoError(t, err)
			require.True(t, added)
			require.Equal(t, int64(3), r.Index)
			leaves = append(leaves, r.Hash)
			count, err := st.StoredHashCount(ctx, "p")
			require.NoError(t, err)
			require.Equal(t, tlog.StoredHashCount(4), count)
			got, err := tlog.TreeHash(4, st.HashReader(ctx, "p"))
			require.NoError(t, err)
			want, err := tlog.TreeHash(4, tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
				all := make([]tlog.Hash, 0, tlog.StoredHashCount(4))
				var rd tlog.HashReaderFunc = func(ix []int64) ([]tlog.Hash, error) {
					out := make([]tlog.Hash, len(ix))
					for i, x := range ix {
						out[i] = all[x]
					}
					return out, nil
				}
				for i, l := range leaves {
					hs, err := tlog.StoredHashesForRecordHash(int64(i), l, rd)
					if err != nil {
						return nil, err
					}
					all = append(all, hs...)
				}
				return rd(idx)
			}))
			require.NoError(t, err)
			require.Equal(t, want, got, "one tree across the upgrade")
			for _, q := range []string{`DELETE FROM audit_hashes`, `UPDATE audit_events SET actor = 'users/x'`} {
				_, err := db.Exec(ctx, q)
				require.ErrorContains(t, err, "append-only", q)
			}
		})
	}
}
