package store

import (
	"cmp"
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/wrapperspb"

	platformids "github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
	"github.com/clinicchat/clinicchat/services/preferences/internal/domain"
)

// The repository contract suite: every test runs against every backend
// (SQLite always, PostgreSQL when reachable).

func forEachBackend(t *testing.T, f func(t *testing.T, st *Store, db *sqldb.DB)) {
	t.Helper()
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			db := testkit.OpenDB(t, b)
			st, err := New(context.Background(), db)
			require.NoError(t, err)
			f(t, st, db)
		})
	}
}

var t0 = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

// set is a mutation that stores p (with an event) unless it equals the
// current entry.
func set(p domain.Patient) domain.Mutation {
	return func(cur *domain.Patient) (*domain.Patient, []domain.Event, error) {
		if cur != nil {
			if cur.SameDirectoryEntry(&p) {
				return nil, nil, nil
			}
			p.ID, p.ChatOptIn = cur.ID, cur.ChatOptIn
		}
		ev := domain.Event{ID: platformids.New(), Subject: "clinicchat.preferences.patient.upserted", Msg: wrapperspb.String(p.ID)}
		return &p, []domain.Event{ev}, nil
	}
}

func outboxRows(t *testing.T, db *sqldb.DB) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow(context.Background(), `SELECT COUNT(*) FROM outbox`).Scan(&n))
	return n
}

func pat(practice, id, ext, name string, portal, optIn bool) domain.Patient {
	return domain.Patient{Practice: practice, ID: id, ExternalID: ext, DisplayName: name, DateOfBirth: "1980-02-03",
		HasPortalAccount: portal, ChatOptIn: optIn, UpdateTime: t0}
}

func TestUpsertAndGet(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, st *Store, db *sqldb.DB) {
		ctx := context.Background()
		p := pat("pr1", "p1", "ext-1", "José García", true, false)
		got, err := st.UpsertPatient(ctx, "pr1", domain.PatientKey{ExternalID: "ext-1"}, set(p))
		require.NoError(t, err)
		require.Equal(t, p, *got)
		require.Equal(t, 1, outboxRows(t, db))

		read, err := st.GetPatient(ctx, "pr1", "p1")
		require.NoError(t, err)
		require.Equal(t, p, *read)

		// The same entry again changes nothing and publishes nothing.
		again := p
		again.ID = "other-id-never-used"
		got, err = st.UpsertPatient(ctx, "pr1", domain.PatientKey{ExternalID: "ext-1"}, set(again))
		require.NoError(t, err)
		require.Equal(t, p, *got)
		require.Equal(t, 1, outboxRows(t, db))

		// A change is stored with its event.
		changed := p
		changed.DateOfBirth = "1981-01-01"
		changed.UpdateTime = t0.Add(time.Hour)
		got, err = st.UpsertPatient(ctx, "pr1", domain.PatientKey{ExternalID: "ext-1"}, set(changed))
		require.NoError(t, err)
		require.Equal(t, "1981-01-01", got.DateOfBirth)
		require.Equal(t, 2, outboxRows(t, db))

		// Tenancy: another practice has no such patient.
		_, err = st.GetPatient(ctx, "pr2", "p1")
		require.ErrorIs(t, err, domain.ErrPatientNotFound)
		_, err = st.UpdatePatient(ctx, "pr2", "p1", set(p))
		require.ErrorIs(t, err, domain.ErrPatientNotFound)
		// The same external id is free in another practice.
		_, err = st.UpsertPatient(ctx, "pr2", domain.PatientKey{ExternalID: "ext-1"}, set(pat("pr2", "p1", "ext-1", "Other Person", true, true)))
		require.NoError(t, err)
	})
}

func TestUpsertByIDAndExternalIDConflict(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, st *Store, db *sqldb.DB) {
		ctx := context.Background()
		_, err := st.UpsertPatient(ctx, "pr", domain.PatientKey{ID: "a"}, set(pat("pr", "a", "ext-a", "Ana Ruiz", true, true)))
		require.NoError(t, err)
		_, err = st.UpsertPatient(ctx, "pr", domain.PatientKey{ID: "b"}, set(pat("pr", "b", "ext-b", "Bea Ruiz", true, true)))
		require.NoError(t, err)
		// b may not take a's external id, and a new patient may not either.
		_, err = st.UpsertPatient(ctx, "pr", domain.PatientKey{ID: "b"}, set(pat("pr", "b", "ext-a", "Bea Ruiz", true, true)))
		require.ErrorIs(t, err, domain.ErrExternalIDInUse)
		_, err = st.UpsertPatient(ctx, "pr", domain.PatientKey{ID: "c"}, set(pat("pr", "c", "ext-a", "Cris Ruiz", true, true)))
		require.ErrorIs(t, err, domain.ErrExternalIDInUse)
		require.Equal(t, 2, outboxRows(t, db), "refused upserts write nothing")
		// b may change its own external id.
		got, err := st.UpsertPatient(ctx, "pr", domain.PatientKey{ID: "b"}, set(pat("pr", "b", "ext-b2", "Bea Ruiz", true, true)))
		require.NoError(t, err)
		require.Equal(t, "ext-b2", got.ExternalID)
	})
}

func TestUpdatePatientKeepsSearchInStep(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, st *Store, db *sqldb.DB) {
		ctx := context.Background()
		_, err := st.UpsertPatient(ctx, "pr", domain.PatientKey{ID: "a"}, set(pat("pr", "a", "ext-a", "Ana Ruiz", true, true)))
		require.NoError(t, err)
		_, err = st.UpsertPatient(ctx, "pr", domain.PatientKey{ID: "a"}, set(pat("pr", "a", "ext-a", "Anaïs Dubois", true, true)))
		require.NoError(t, err)
		require.Empty(t, search(t, st, "pr", "ruiz", true))
		require.Equal(t, []string{"a"}, ids(search(t, st, "pr", "anais dub", true)))
		var rows int
		require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM patient_prefixes WHERE patient_id = 'a'`).Scan(&rows))
		require.Equal(t, len(deriveSearch("Anaïs Dubois").prefixes), rows, "the old name's rows are gone")
		requireCountsInStep(t, db)

		// Preferences: opt in, then out; each read sees the last commit.
		for _, optIn := range []bool{true, false} {
			_, err := st.UpdatePatient(ctx, "pr", "a", func(cur *domain.Patient) (*domain.Patient, []domain.Event, error) {
				next := *cur
				next.ChatOptIn = optIn
				next.PrefsUpdateTime = t0
				return &next, nil, nil
			})
			require.NoError(t, err)
			got, err := st.GetPatient(ctx, "pr", "a")
			require.NoError(t, err)
			require.Equal(t, optIn, got.ChatOptIn)
			require.Equal(t, optIn, len(search(t, st, "pr", "anais", false)) == 1)
		}
	})
}

func search(t *testing.T, st *Store, practice, query string, incl bool) []domain.SearchHit {
	t.Helper()
	var out []domain.SearchHit
	var after *domain.Cursor
	for {
		hits, err := st.SearchPatients(context.Background(), domain.SearchQuery{
			Practice: practice, Words: domain.QueryWords(query), IncludeIneligible: incl, Limit: 3, After: after})
		require.NoError(t, err)
		out = append(out, hits...)
		if len(hits) < 3 {
			return out
		}
		last := hits[len(hits)-1]
		after = &domain.Cursor{Tier: last.Tier, ID: last.Patient.ID}
	}
}

func ids(hits []domain.SearchHit) []string {
	out := make([]string, len(hits))
	for i, h := range hits {
		out[i] = h.Patient.ID
	}
	return out
}

func TestSearchOrderAndEligibility(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, st *Store, db *sqldb.DB) {
		ctx := context.Background()
		for _, p := range []domain.Patient{
			pat("pr", "ana", "e1", "Ana", true, true),
			pat("pr", "anagarcia", "e2", "Ana García", true, true),
			pat("pr", "anamaria", "e3", "Ana María López", true, true),
			pat("pr", "anabel", "e4", "Anabel Ruiz", true, true),
			pat("pr", "juana", "e5", "Juana Anaya", true, true),
			pat("pr", "noportal", "e6", "Ana Noportal", false, true),
			pat("pr", "optedout", "e7", "Ana Optedout", true, false),
			pat("pr", "jose", "e8", "José García", true, true),
			pat("pr", "josem", "e9", "José Martín", true, true),
			pat("other", "ana2", "e1", "Ana", true, true),
		} {
			_, err := st.UpsertPatient(ctx, p.Practice, domain.PatientKey{ID: p.ID}, set(p))
			require.NoError(t, err)
		}
		require.Equal(t, []string{"ana", "anagarcia", "anamaria", "anabel", "juana"}, ids(search(t, st, "pr", "ana", false)))
		hits := search(t, st, "pr", "ANA", true)
		require.Equal(t, []string{"ana", "anagarcia", "anamaria", "noportal", "optedout", "anabel", "juana"}, ids(hits))
		require.Equal(t, []int{0, 1, 1, 1, 1, 2, 2}, tiers(hits))
		require.Equal(t, []string{"jose"}, ids(search(t, st, "pr", "jose gar", false)))
		require.Equal(t, []string{"jose"}, ids(search(t, st, "pr", "GARCÍA josé", false)))
		require.Equal(t, []string{"anagarcia", "jose"}, ids(search(t, st, "pr", "garcia", false)))
		require.Empty(t, search(t, st, "pr", "ose", true))
		// Empty query: everyone eligible, by name.
		require.Equal(t, []string{"ana", "anagarcia", "anamaria", "anabel", "jose", "josem", "juana"}, ids(search(t, st, "pr", "", false)))
		require.Len(t, search(t, st, "pr", "", true), 9)
		// A cursor naming an unknown patient is refused.
		_, err := st.SearchPatients(ctx, domain.SearchQuery{Practice: "pr", Words: []string{"ana"}, Limit: 3, After: &domain.Cursor{Tier: 1, ID: "nobody"}})
		require.ErrorIs(t, err, domain.ErrBadPageToken)
	})
}

func tiers(hits []domain.SearchHit) []int {
	out := make([]int, len(hits))
	for i, h := range hits {
		out[i] = h.Tier
	}
	return out
}

// TestSearchMatchesOracle compares search, page by page, with a brute-force
// evaluation of the rule on random synthetic patients and typed queries.
func TestSearchMatchesOracle(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, st *Store, db *sqldb.DB) {
		ctx := context.Background()
		names := newNamer(3)
		ps := make([]domain.Patient, 400)
		for i := range ps {
			ps[i] = names.patient("pr", i)
		}
		// Some exact full-name twins and single-word names.
		ps[1].DisplayName, ps[2].DisplayName, ps[3].DisplayName = ps[0].DisplayName, "María", "Maria"
		require.NoError(t, db.Write(ctx, func(tx *sqldb.Tx) error { return insertPatients(ctx, tx, ps) }))
		requireCountsInStep(t, db)
		r := rand.New(rand.NewPCG(1, 2))
		queries := []string{"maria", "mar", "m", "maria garcia", "garcia maria", "jo gar", "ana mar lo", "o'brien", "zzz", "mar mari"}
		for _, n := range []int{1, 2, 3} {
			queries = append(queries, benchQueries(r, ps, n, 15)...)
		}
		for _, q := range queries {
			for _, incl := range []bool{false, true} {
				want := oracle(ps, q, incl)
				got := search(t, st, "pr", q, incl)
				require.Equal(t, want, ids(got), "query %q include_ineligible=%v", q, incl)
			}
		}
	})
}

func oracle(ps []domain.Patient, query string, incl bool) []string {
	words := domain.QueryWords(query)
	type hit struct {
		tier    int
		key, id string
	}
	var hits []hit
	for _, p := range ps {
		if ok, _ := p.Eligibility(); !ok && !incl {
			continue
		}
		nw := domain.SplitName(p.DisplayName)
		all, whole := true, true
		for _, q := range words {
			prefix := slices.ContainsFunc(nw.Index, func(w string) bool { return strings.HasPrefix(w, q) })
			all = all && prefix
			whole = whole && slices.Contains(nw.Index, q)
		}
		if !all {
			continue
		}
		tier := 2
		switch {
		case nw.Key() == strings.Join(words, " "):
			tier = 0
		case whole:
			tier = 1
		}
		hits = append(hits, hit{tier, nw.Key(), p.ID})
	}
	slices.SortFunc(hits, func(a, b hit) int {
		return cmp.Or(cmp.Compare(a.tier, b.tier), strings.Compare(a.key, b.key), strings.Compare(a.id, b.id))
	})
	out := []string{}
	for _, h := range hits {
		out = append(out, h.id)
	}
	return out
}

// TestConcurrentCreatesOfOneExternalID: practice systems retrying one create
// at once end with one patient, and every caller gets it.
func TestConcurrentCreatesOfOneExternalID(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, st *Store, db *sqldb.DB) {
		ctx := context.Background()
		const n = 8
		got := make(chan string, n)
		errc := make(chan error, n)
		for range n {
			go func() {
				p, err := st.UpsertPatient(ctx, "pr", domain.PatientKey{ExternalID: "ext-race"}, func(cur *domain.Patient) (*domain.Patient, []domain.Event, error) {
					next := pat("pr", platformids.New(), "ext-race", "Rae Race", true, false)
					return set(next)(cur)
				})
				errc <- err
				if p != nil {
					got <- p.ID
				}
			}()
		}
		first := ""
		for range n {
			require.NoError(t, <-errc)
			id := <-got
			if first == "" {
				first = id
			}
			require.Equal(t, first, id)
		}
		var rows int
		require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM patients WHERE practice = 'pr'`).Scan(&rows))
		require.Equal(t, 1, rows)
		require.Equal(t, 1, outboxRows(t, db), "one create, one event")
	})
}

// requireCountsInStep checks prefix_counts against patient_prefixes.
func requireCountsInStep(t *testing.T, db *sqldb.DB) {
	t.Helper()
	var bad int
	require.NoError(t, db.QueryRow(context.Background(), `SELECT COUNT(*) FROM prefix_counts c WHERE
		whole <> (SELECT COUNT(*) FROM patient_prefixes x WHERE x.practice = c.practice AND x.prefix = c.prefix AND x.rank <= 1) OR
		partial <> (SELECT COUNT(*) FROM patient_prefixes x WHERE x.practice = c.practice AND x.prefix = c.prefix AND x.rank = 2)`).Scan(&bad))
	require.Zero(t, bad)
	require.NoError(t, db.QueryRow(context.Background(), `SELECT COUNT(*) FROM patient_prefixes x WHERE NOT EXISTS
		(SELECT 1 FROM prefix_counts c WHERE c.practice = x.practice AND c.prefix = x.prefix)`).Scan(&bad))
	require.Zero(t, bad)
}
