package outbox

import (
	"sync"
	"time"
)

// The PostgreSQL hand-off of payloads. A PostgreSQL relay read every row's
// payload back from the table it had just been written to: each event's
// bytes went from the writer to the server and back, and were decoded and
// copied twice on the way in (11 % of delivery's allocations, BENCHMARKS.md
// dist16). Seqs there are taken by nextval at the INSERT, which goes with
// the COMMIT (AddAll), so the writer does not know them, and rows commit out
// of seq order and may come from other replicas: which rows a round
// publishes, and in which order, is still what the claim reads from the
// table. What the writer hands over after its commit (sqldb Tx.Hand, the
// same as on SQLite) is only each row's payload, by event id; the claim
// reads the rows without their payloads when the relay holds some, and
// only the rows it holds none for (another replica's, a restart's, one
// evicted or dropped from a full map) are read again with their payload,
// in one more statement of the round.
//
// Ids are fresh per event (the send path's outboxes have no UNIQUE index on
// id, as on SQLite), and only a committed write hands its rows over: while a
// row is in the table, the payload handed over with its id is the row's.
// Should an id be written again (a writer repeating an event), created_at,
// taken anew by every AddAll, tells the entries apart: a payload is used
// only for the row of its id and created_at, and the stream's duplicate
// window drops the repeat. The table stays the record: a restart
// or a crash loses the map, and the rows' payloads are read from the table.

// payloadAge is how long a handed-over payload waits for its row's claim:
// rows another replica's relay published leave theirs behind, which go
// after this. A row claimed later has its payload read from the table.
const payloadAge = 10 * time.Second

// payloads is a PostgreSQL relay's map of handed-over payloads.
type payloads struct {
	max   int // entries at most (handoffRows)
	mu    sync.Mutex
	byID  map[string]payload
	order []handedID // ids in the order handed over, for eviction
}

type payload struct {
	data    []byte
	created int64     // the row's created_at
	at      time.Time // when it was handed over: its entry in order
}

type handedID struct {
	id string
	at time.Time
}

func newPayloads(max int) *payloads {
	return &payloads{max: max, byID: map[string]payload{}}
}

// push keeps the payloads of a commit's rows (sqldb.DB.OnHand's receiver:
// the committing goroutine calls it, and it must not block). Rows that do
// not fit are left out: the relay reads theirs from the table.
func (p *payloads) push(v any) {
	rows, ok := v.([]row)
	if !ok {
		return
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.evict(now)
	for _, x := range rows {
		if len(p.byID) >= p.max {
			return
		}
		p.byID[x.id] = payload{data: x.payload, created: x.created, at: now}
		p.order = append(p.order, handedID{x.id, now})
	}
}

// live reports whether h is the entry in order of a payload p holds: not
// one taken meanwhile, nor an earlier hand-over of an id handed again.
func (p *payloads) live(h handedID) bool {
	e, ok := p.byID[h.id]
	return ok && e.at.Equal(h.at)
}

// evict drops the entries handed over more than payloadAge before now,
// and the ids of the entries taken meanwhile at the head of order.
func (p *payloads) evict(now time.Time) {
	i := 0
	for ; i < len(p.order); i++ {
		h := p.order[i]
		if !p.live(h) {
			continue // taken, or handed again later: that entry is further on
		}
		if now.Sub(h.at) < payloadAge {
			break
		}
		delete(p.byID, h.id)
	}
	if i > 0 {
		n := copy(p.order, p.order[i:])
		clear(p.order[n:])
		p.order = p.order[:n]
	}
}

// empty reports whether p holds no payload: the claim might as well read
// them all.
func (p *payloads) empty() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byID) == 0
}

// fill gives each row the payload handed over for it, removing it from p,
// and returns the seqs of the rows it has none for.
func (p *payloads) fill(rows []row) (missing []int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range rows {
		x := &rows[i]
		e, ok := p.byID[x.id]
		if !ok || e.created != x.created {
			missing = append(missing, x.seq)
			continue
		}
		x.payload = e.data
		delete(p.byID, x.id)
	}
	if len(p.order) > 2*len(p.byID)+64 {
		// Most of order are taken entries: drop them.
		n := 0
		for _, h := range p.order {
			if p.live(h) {
				p.order[n] = h
				n++
			}
		}
		clear(p.order[n:])
		p.order = p.order[:n]
	}
	return missing
}
