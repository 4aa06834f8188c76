package store

import (
	"sync"

	"github.com/clinicchat/clinicchat/services/preferences/internal/domain"
)

// maxCachedPatients bounds patientCache (a few MB); past it the cache
// starts over.
const maxCachedPatients = 20_000

// patientKey names a patient of a practice.
type patientKey struct{ practice, id string }

// patientCache keeps the patients GetPatient read, so the eligibility check
// of every send (delivery asks GetPatient once per message) costs no
// database read. It is used only where this process is the database's one
// writer (SQLite: one writer connection in one process; PostgreSQL may have
// other replicas writing, so there is no cache there), and it is exact: it
// never answers with a value older than a write that has returned.
//
// Every write of a patient goes through begin and end around the database
// write (sqldb.Write returns only once its commit's outcome is known):
//   - begin drops the patient's entry (when its id is known) and counts the
//     write in flight; end counts it out and drops the entry (or everything,
//     when the write failed or its patient is unknown);
//   - both bump gen, and a read fills the cache only if no write was in
//     flight and gen did not move between its miss and its fill, so a value
//     read from the database before or during a write is never cached.
//
// A read that starts after a write returned (an opt-out acknowledged) finds
// no entry from before it and reads the database.
type patientCache struct {
	mu      sync.Mutex
	gen     uint64
	writing int
	m       map[patientKey]domain.Patient
}

func newPatientCache() *patientCache {
	return &patientCache{m: make(map[patientKey]domain.Patient)}
}

// get returns the cached patient, or the generation to fill it with.
func (c *patientCache) get(k patientKey) (domain.Patient, bool, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.m[k]
	return p, ok, c.gen
}

// fill caches p, read from the database after get answered gen, unless a
// write began since.
func (c *patientCache) fill(k patientKey, p domain.Patient, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.writing > 0 || c.gen != gen {
		return
	}
	if len(c.m) >= maxCachedPatients {
		c.m = make(map[patientKey]domain.Patient)
	}
	c.m[k] = p
}

// begin is called before a write of patient k (nil: not known yet).
func (c *patientCache) begin(k *patientKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writing++
	c.gen++
	if k != nil {
		delete(c.m, *k)
	}
}

// end is called once the write has returned: k is the patient written (nil
// with all when it is not known, or the outcome is not).
func (c *patientCache) end(k *patientKey, all bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writing--
	c.gen++
	switch {
	case all:
		clear(c.m)
	case k != nil:
		delete(c.m, *k)
	}
}
