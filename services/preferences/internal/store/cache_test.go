package store

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/preferences/internal/domain"
)

// Readers race a patient who keeps changing their opt-in: every read that
// starts after a change has returned sees that change or a later one, never
// an older state (the SQLite store answers from its cache; PostgreSQL has
// none). Each change stamps PrefsUpdateTime with its number, so a read tells
// which change it saw.
func TestGetPatientNeverOlderThanAReturnedWrite(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, st *Store, db *sqldb.DB) {
		ctx := context.Background()
		p := pat("pr1", "p1", "ext-1", "Ana", true, false)
		_, err := st.UpsertPatient(ctx, "pr1", domain.PatientKey{ExternalID: "ext-1"}, set(p))
		require.NoError(t, err)
		version := func(q *domain.Patient) int64 {
			if q.PrefsUpdateTime.IsZero() {
				return 0
			}
			return int64(q.PrefsUpdateTime.Sub(t0) / time.Second)
		}

		const changes = 100
		var acked atomic.Int64 // the last change whose UpdatePatient returned
		var reads atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					before := acked.Load()
					got, err := st.GetPatient(ctx, "pr1", "p1")
					if !assertNoError(t, err) {
						return
					}
					v := version(got)
					if v < before {
						t.Errorf("read change %d after change %d had returned", v, before)
						return
					}
					if got.ChatOptIn != (v%2 == 1) {
						t.Errorf("change %d read with chatOptIn=%v", v, got.ChatOptIn)
						return
					}
					reads.Add(1)
				}
			}()
		}
		for n := int64(1); n <= changes; n++ {
			_, err := st.UpdatePatient(ctx, "pr1", "p1", func(cur *domain.Patient) (*domain.Patient, []domain.Event, error) {
				next := *cur
				next.ChatOptIn, next.PrefsUpdateTime = n%2 == 1, t0.Add(time.Duration(n)*time.Second)
				return &next, nil, nil
			})
			require.NoError(t, err)
			acked.Store(n)
			// A read right after the change returned sees it (the opt-out
			// governs the very next send).
			got, err := st.GetPatient(ctx, "pr1", "p1")
			require.NoError(t, err)
			require.Equal(t, n, version(got))
		}
		close(stop)
		wg.Wait()
		require.Positive(t, reads.Load())
		t.Logf("%d concurrent reads", reads.Load())

		// A failed write (the patient is missing) leaves the cache exact too.
		_, err = st.UpdatePatient(ctx, "pr1", "nobody", func(cur *domain.Patient) (*domain.Patient, []domain.Event, error) {
			return cur, nil, nil
		})
		require.ErrorIs(t, err, domain.ErrPatientNotFound)
		got, err := st.GetPatient(ctx, "pr1", "p1")
		require.NoError(t, err)
		require.Equal(t, int64(changes), version(got))
	})
}

// The cache is keyed by practice: another practice's patient of the same id
// is not found, and an upsert by external id (the patient's id unknown
// until read) invalidates what it changed.
func TestGetPatientCacheAfterUpsertByExternalID(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, st *Store, db *sqldb.DB) {
		ctx := context.Background()
		p := pat("pr1", "p1", "ext-1", "Ana", true, true)
		_, err := st.UpsertPatient(ctx, "pr1", domain.PatientKey{ExternalID: "ext-1"}, set(p))
		require.NoError(t, err)
		got, err := st.GetPatient(ctx, "pr1", "p1") // cached
		require.NoError(t, err)
		require.True(t, got.HasPortalAccount)
		_, err = st.GetPatient(ctx, "pr2", "p1")
		require.ErrorIs(t, err, domain.ErrPatientNotFound)

		p.HasPortalAccount = false // the practice closes the portal account
		_, err = st.UpsertPatient(ctx, "pr1", domain.PatientKey{ExternalID: "ext-1"}, set(p))
		require.NoError(t, err)
		got, err = st.GetPatient(ctx, "pr1", "p1")
		require.NoError(t, err)
		require.False(t, got.HasPortalAccount)
		got.DisplayName = "changed by a caller"
		again, err := st.GetPatient(ctx, "pr1", "p1")
		require.NoError(t, err)
		require.Equal(t, "Ana", again.DisplayName, "callers get their own copy")
	})
}

// A value read from the database before or during a write is never cached,
// whatever order the read and the write finish in.
func TestPatientCacheRefusesFillsAcrossAWrite(t *testing.T) {
	t.Parallel()
	k := patientKey{"pr1", "p1"}
	old, cur := domain.Patient{ID: "p1"}, domain.Patient{ID: "p1", ChatOptIn: true}
	c := newPatientCache()

	_, ok, gen := c.get(k) // a miss, then the database read ...
	require.False(t, ok)
	c.begin(&k) // ... races a write
	c.fill(k, old, gen)
	_, ok, _ = c.get(k)
	require.False(t, ok, "filled while the write was in flight")
	c.end(&k, false)
	c.fill(k, old, gen)
	_, ok, gen = c.get(k)
	require.False(t, ok, "filled with a value read before the write ended")

	c.fill(k, cur, gen) // read after the write: cached
	got, ok, _ := c.get(k)
	require.True(t, ok)
	require.Equal(t, cur, got)

	c.begin(nil) // a write of a patient not known yet ...
	_, ok, _ = c.get(k)
	require.True(t, ok, "other patients' entries stay while it runs")
	c.end(nil, true) // ... that failed: everything goes
	_, ok, _ = c.get(k)
	require.False(t, ok)
}

func assertNoError(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Error(err)
		return false
	}
	return true
}
