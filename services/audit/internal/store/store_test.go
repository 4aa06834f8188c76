package store_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
	"github.com/clinicchat/clinicchat/services/audit/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// The repository contract: every test runs against every backend.
func forEachBackend(t *testing.T, f func(t *testing.T, st *store.Store, db *sqldb.DB)) {
	t.Helper()
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			db := testkit.OpenDB(t, b)
			st, err := store.New(context.Background(), db)
			require.NoError(t, err)
			f(t, st, db)
		})
	}
}

var t0 = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

func entry(practice, id string, i int) domain.Entry {
	return domain.Entry{
		EventID: id, Time: t0.Add(time.Duration(i) * time.Second), Practice: practice,
		Actor: "users/u", ActorRole: "dentist", Action: "message.send", Resource: "conversations/c/messages/m" + fmt.Sprint(i),
		Outcome: domain.OutcomeAllowed,
	}
}

func TestAppend(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st *store.Store, _ *sqldb.DB) {
		ctx := context.Background()
		for i := range 5 {
			for _, p := range []string{"p1", "p2"} {
				r, added, err := st.Append(ctx, entry(p, fmt.Sprintf("%s-e%d", p, i), i))
				require.NoError(t, err)
				require.True(t, added)
				require.Equal(t, int64(i), r.Index)
				require.True(t, r.Matches())
			}
		}
		n, err := st.Size(ctx, "p1")
		require.NoError(t, err)
		require.Equal(t, int64(5), n)
		n, err = st.Size(ctx, "nobody")
		require.NoError(t, err)
		require.Zero(t, n)
		sizes, err := st.Sizes(ctx)
		require.NoError(t, err)
		require.Equal(t, map[string]int64{"p1": 5, "p2": 5}, sizes)

		// The stored record reads back exactly, time and hash included.
		e := entry("p1", "p1-e2", 2)
		e.Time = e.Time.Add(123456789 * time.Nanosecond)
		recs, err := st.Range(ctx, "p1", 2, 3)
		require.NoError(t, err)
		require.Len(t, recs, 1)
		require.Equal(t, int64(2), recs[0].Index)
		require.True(t, recs[0].Matches())
		require.Equal(t, entry("p1", "p1-e2", 2).Normalize(), recs[0].Entry)

		// LeafHashes are the records' stored hashes, by index, of the
		// practice asked for only.
		all, err := st.Range(ctx, "p1", 1, 4)
		require.NoError(t, err)
		leaves, err := st.LeafHashes(ctx, "p1", 1, 4)
		require.NoError(t, err)
		require.Len(t, leaves, 3)
		for i, r := range all {
			require.Equal(t, r.Hash, leaves[i], "index %d", r.Index)
		}
		other, err := st.LeafHashes(ctx, "p2", 1, 4)
		require.NoError(t, err)
		require.NotEqual(t, leaves, other)
	})
}

func TestAppendIgnoresDuplicateEventIDs(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st *store.Store, _ *sqldb.DB) {
		ctx := context.Background()
		first, added, err := st.Append(ctx, entry("p", "e1", 0))
		require.NoError(t, err)
		require.True(t, added)
		again := entry("p", "e1", 7) // a redelivery, even one that differs, changes nothing
		r, added, err := st.Append(ctx, again)
		require.NoError(t, err)
		require.False(t, added)
		require.Equal(t, first, r)
		n, err := st.Size(ctx, "p")
		require.NoError(t, err)
		require.Equal(t, int64(1), n)
	})
}

func TestConcurrentAppendsFormOneTree(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st *store.Store, _ *sqldb.DB) {
		ctx := context.Background()
		const n = 60
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				// Every event twice, concurrently: still one record each.
				if _, _, err := st.Append(ctx, entry("p", fmt.Sprintf("e%d", i%(n/2)), i)); err != nil {
					t.Error(err) // not require: this is not the test's goroutine
				}
			})
		}
		wg.Wait()
		size := int64(n / 2)
		recs, root := requireTree(t, st, "p", size)

		// Proofs from storage check against the root.
		for i := range size {
			p, err := tlog.ProveRecord(size, i, st.HashReader(ctx, "p"))
			require.NoError(t, err)
			require.NoError(t, tlog.CheckRecord(p, size, root, i, recs[i].Hash))
		}
		old, err := tlog.TreeHash(7, st.HashReader(ctx, "p"))
		require.NoError(t, err)
		tp, err := tlog.ProveTree(size, 7, st.HashReader(ctx, "p"))
		require.NoError(t, err)
		require.NoError(t, tlog.CheckTree(tp, size, root, 7, old))
		_, err = st.HashReader(ctx, "other").ReadHashes([]int64{0})
		require.ErrorIs(t, err, store.ErrMissingHash)
	})
}

func TestList(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st *store.Store, _ *sqldb.DB) {
		ctx := context.Background()
		actors := []string{"users/a", "users/b", "patients/p"}
		resources := []string{"conversations/c1", "conversations/c1/messages/m1", "conversations/c10", "conversations/C1/messages/x", "attachments/a1"}
		var all []domain.Record
		for i := range 40 {
			e := domain.Entry{
				EventID: fmt.Sprintf("e%d", i), Practice: "p",
				// Some times repeat and some go backwards: order is by (time, index).
				Time:      t0.Add(time.Duration((i*7)%13) * time.Minute),
				Actor:     actors[i%len(actors)],
				ActorRole: "dentist",
				Action:    []string{"message.send", "conversation.view"}[i%2],
				Resource:  resources[i%len(resources)],
				Outcome:   []domain.Outcome{domain.OutcomeAllowed, domain.OutcomeDenied}[i%3/2],
			}
			r, _, err := st.Append(ctx, e)
			require.NoError(t, err)
			all = append(all, r)
		}
		_, _, err := st.Append(ctx, entry("other", "x1", 0))
		require.NoError(t, err)

		filters := []string{
			``,
			`actor="users/a"`,
			`action="conversation.view"`,
			`resource="conversations/c1"`,
			`resource="conversations/c10"`,
			`resource="conversations/c1/messages/m1"`,
			`outcome="DENIED"`,
			`time>="2026-03-01T09:05:00Z" AND time<"2026-03-01T09:09:00Z"`,
			`time>"2026-03-01T09:05:00Z" AND time<="2026-03-01T09:09:00Z"`,
			`actor="patients/p" AND outcome="ALLOWED" AND resource="conversations"`,
			`actor="nobody"`,
		}
		for _, fs := range filters {
			f, err := domain.ParseFilter(fs)
			require.NoError(t, err)
			for _, asc := range []bool{false, true} {
				var want []domain.Record
				for _, r := range all {
					if f.Match(r) {
						want = append(want, r)
					}
				}
				slices.SortFunc(want, func(a, b domain.Record) int {
					if c := a.Time.Compare(b.Time); c != 0 {
						return c
					}
					return int(a.Index - b.Index)
				})
				if !asc {
					slices.Reverse(want)
				}
				// Page through 3 at a time.
				var got []domain.Record
				q := domain.ListQuery{Practice: "p", Filter: f, Limit: 3, Ascending: asc}
				for {
					page, err := st.List(ctx, q)
					require.NoError(t, err)
					got = append(got, page...)
					if len(page) < 3 {
						break
					}
					last := page[len(page)-1]
					q.After = &domain.Cursor{TimeMicros: last.Time.UnixMicro(), Index: last.Index}
				}
				require.Equal(t, want, got, "filter %s ascending %v", fs, asc)
			}
		}
	})
}

func TestCheckpoints(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st *store.Store, _ *sqldb.DB) {
		ctx := context.Background()
		_, ok, err := st.LatestCheckpoint(ctx, "p")
		require.NoError(t, err)
		require.False(t, ok)
		for _, n := range []int64{3, 1, 2} {
			c := domain.Checkpoint{Practice: "p", Size: n, Root: tlog.RecordHash([]byte{byte(n)}), Note: fmt.Sprint("note ", n), Time: t0}
			got, err := st.SaveCheckpoint(ctx, c)
			require.NoError(t, err)
			require.Equal(t, c, got)
		}
		// Saving another checkpoint of an existing size keeps the first.
		got, err := st.SaveCheckpoint(ctx, domain.Checkpoint{Practice: "p", Size: 2, Note: "other", Time: t0})
		require.NoError(t, err)
		require.Equal(t, "note 2", got.Note)
		latest, ok, err := st.LatestCheckpoint(ctx, "p")
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, int64(3), latest.Size)
		cps, err := st.Checkpoints(ctx, "p")
		require.NoError(t, err)
		require.Len(t, cps, 3)
		for i, c := range cps {
			require.Equal(t, int64(i+1), c.Size)
		}
	})
}

// The storage itself refuses to change or remove what it stored.
func TestAppendOnly(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st *store.Store, db *sqldb.DB) {
		ctx := context.Background()
		for i := range 3 {
			_, _, err := st.Append(ctx, entry("p", fmt.Sprint("e", i), i))
			require.NoError(t, err)
		}
		_, err := st.SaveCheckpoint(ctx, domain.Checkpoint{Practice: "p", Size: 3, Note: "n", Time: t0})
		require.NoError(t, err)
		stmts := []string{
			`UPDATE audit_events SET actor = 'users/x' WHERE idx = 1`,
			`UPDATE audit_events SET idx = idx + 10`,
			`DELETE FROM audit_events WHERE idx = 2`,
			`DELETE FROM audit_events`,
			`UPDATE audit_hashes SET hash = hash`,
			`DELETE FROM audit_hashes WHERE hidx = 0`,
			`UPDATE audit_checkpoints SET note = 'forged'`,
			`DELETE FROM audit_checkpoints`,
		}
		if db.Dialect() == sqldb.Postgres {
			stmts = append(stmts, `TRUNCATE audit_events`, `TRUNCATE audit_hashes`, `TRUNCATE audit_checkpoints`)
		}
		for _, s := range stmts {
			_, err := db.Exec(ctx, s)
			require.Error(t, err, s)
			require.Contains(t, err.Error(), "append-only", s)
		}
		recs, err := st.Range(ctx, "p", 0, 10)
		require.NoError(t, err)
		require.Len(t, recs, 3)
		require.Equal(t, "users/u", recs[1].Actor)
		count, err := st.StoredHashCount(ctx, "p")
		require.NoError(t, err)
		require.Equal(t, tlog.StoredHashCount(3), count)
		cps, err := st.Checkpoints(ctx, "p")
		require.NoError(t, err)
		require.Len(t, cps, 1)
		require.Equal(t, "n", cps[0].Note)
	})
}

// A batch is appended in its order in one transaction; ids repeated within
// it or already stored add nothing; concurrent batches that touch the same
// practices in opposite orders neither deadlock (PostgreSQL's per-practice
// locks) nor break either practice's tree.
func TestAppendAllBatches(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st *store.Store, _ *sqldb.DB) {
		ctx := context.Background()
		_, _, err := st.Append(ctx, entry("p1", "p1-e0", 0))
		require.NoError(t, err)
		batch := []domain.Entry{entry("p1", "p1-e1", 1), entry("p2", "p2-e0", 0), entry("p1", "p1-e0", 9),
			entry("p1", "p1-e2", 2), entry("p1", "p1-e1", 8)}
		recs, added, err := st.AppendAll(ctx, batch)
		require.NoError(t, err)
		require.Equal(t, []bool{true, true, false, true, false}, added)
		require.Equal(t, []int64{1, 0, 0, 2, 1}, []int64{recs[0].Index, recs[1].Index, recs[2].Index, recs[3].Index, recs[4].Index})
		require.Equal(t, "p1-e1", recs[4].EventID)
		require.Equal(t, t0.Add(time.Second), recs[4].Time, "a repeated id returns the first record")

		const rounds = 20
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for r := range rounds {
					ps := []string{"p1", "p2", "p3"}
					if w%2 == 1 {
						slices.Reverse(ps)
					}
					var b []domain.Entry
					for _, p := range ps {
						// Workers 0 and 1 (and 2 and 3) send the same ids: each
						// is stored once.
						b = append(b, entry(p, fmt.Sprintf("%s-w%d-r%d", p, w/2, r), r))
					}
					if _, _, err := st.AppendAll(ctx, b); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		for p, want := range map[string]int64{"p1": 3 + 2*rounds, "p2": 1 + 2*rounds, "p3": 2 * rounds} {
			requireTree(t, st, p, want)
		}
	})
}

// requireTree checks that p's log has size records, indexed from 0, each
// matching its hash, that the stored hashes are those of the tree of their
// leaves, and returns the records and the tree's root.
func requireTree(t *testing.T, st *store.Store, p string, size int64) ([]domain.Record, tlog.Hash) {
	ctx := context.Background()
	got, err := st.Size(ctx, p)
	require.NoError(t, err)
	require.Equal(t, size, got, p)
	recs, err := st.Range(ctx, p, 0, size)
	require.NoError(t, err)
	require.Len(t, recs, int(size))
	f := domain.NewFrontier()
	for i, r := range recs {
		require.Equal(t, int64(i), r.Index)
		require.True(t, r.Matches())
		want, err := f.Add(r.Hash)
		require.NoError(t, err)
		stored, err := st.StoredHashes(ctx, p, tlog.StoredHashIndex(0, r.Index), tlog.StoredHashCount(r.Index+1))
		require.NoError(t, err)
		require.Len(t, stored, len(want))
		for j := range want {
			require.Equal(t, want[j], stored[j].Hash)
		}
	}
	count, err := st.StoredHashCount(ctx, p)
	require.NoError(t, err)
	require.Equal(t, tlog.StoredHashCount(size), count, p)
	root, err := tlog.TreeHash(size, st.HashReader(ctx, p))
	require.NoError(t, err)
	wantRoot, err := f.Root()
	require.NoError(t, err)
	require.Equal(t, wantRoot, root, p)
	return recs, root
}

// A batch of hundreds of records over several practices (inserted many rows
// per statement, its tree read back from the batch itself), on an empty log
// and then on one that already has a tree.
func TestAppendAllLargeBatches(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st *store.Store, _ *sqldb.DB) {
		ctx := context.Background()
		sizes := map[string]int64{}
		for round, n := range []int{301, 77} {
			var b []domain.Entry
			for i := range n {
				p := fmt.Sprintf("p%d", i%3)
				b = append(b, entry(p, fmt.Sprintf("r%d-e%d", round, i), i))
				sizes[p]++
			}
			recs, added, err := st.AppendAll(ctx, b)
			require.NoError(t, err)
			require.Len(t, recs, n)
			require.NotContains(t, added, false)
		}
		for p, size := range sizes {
			requireTree(t, st, p, size)
		}
	})
}

// Appending batches of every size prepares no more statements on SQLite's
// writer than batches of powers of two: the event id lookups' IN lists and
// the tree hash reads are padded to a power of two. Each statement text is
// kept prepared on the writer connection, in SQLite's heap outside the Go
// heap: a lookup of every length up to 256 ids was 3.7–4.6 MiB of it in the
// all-in-one at 1,000 sends/s (issue 10, BENCHMARKS.md mem18).
func TestAppendAllBatchesOfEverySizePrepareFewStatements(t *testing.T) {
	ctx := context.Background()
	stmts := func(name string, sizes []int) int {
		db, err := sqldb.Open(ctx, t.TempDir()+"/"+name+".db")
		require.NoError(t, err)
		defer db.Close()
		st, err := store.New(ctx, db)
		require.NoError(t, err)
		n := 0
		for _, size := range sizes {
			var b []domain.Entry
			for range size {
				b = append(b, entry("p1", fmt.Sprintf("e%d", n), n))
				n++
			}
			_, added, err := st.AppendAll(ctx, append(b, b[0])) // and a repeated id
			require.NoError(t, err)
			require.False(t, added[size])
		}
		requireTree(t, st, "p1", int64(n))
		for _, m := range sqldb.SQLiteMemory(ctx) {
			if m.DB == name && m.Pool == "writer" {
				return m.Stmts
			}
		}
		t.Fatalf("no writer for %s", name)
		return 0
	}
	var every, pow2 []int
	for size := 1; size <= 64; size++ {
		every = append(every, size)
		if size&(size-1) == 0 {
			pow2 = append(pow2, size)
		}
	}
	pow2 = append(pow2, pow2...) // as many entries in the log, roughly, for the hash reads
	ofEvery, ofPow2 := stmts("every", every), stmts("pow2", pow2)
	require.LessOrEqual(t, ofEvery, ofPow2+ofPow2/4, "statement memory: every size %d KiB, powers of two %d KiB", ofEvery>>10, ofPow2>>10)
}
