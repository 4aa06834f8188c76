package outbox

import (
	"sync"
	"time"
)

// The SQLite hand-off. On SQLite one writer goroutine commits every
// transaction of the process, so rows get their seqs in commit order, and
// AddAll knows each row's seq (it takes a multi-row INSERT's consecutive
// seqs from the writer's counter, sqldb.Tx.Seqs). AddAll hands its rows to the
// process's relays with the transaction (sqldb Tx.Hand); the writer gives
// them over after the commit, in commit order, and never those of a
// transaction (or a group-commit job) that rolled back. The relay then
// publishes them without reading back from the table what was just
// written (outbox.load was two thirds of the relay's CPU under load).
//
// The table stays the record: rows are deleted after their PubAck as
// before, and a restart, a failed publish, a full queue or any gap in the
// seqs reads the table again. The relay takes from the queue only a run of
// rows whose first seq follows the last one it published and whose seqs
// follow each other: no committed row can then lie between them, so the
// run is exactly the table's next rows. Anything else (a gap: rows written
// before the relay started, or dropped from a full queue) sends the relay
// back to the table, which it reads until a read finds less than a batch.

// handoffRows bounds the rows waiting in a relay's hand-off queue: a
// commit that would overflow it is dropped (the relay reads the table).
const handoffRows = 4096

// handoff is a relay's queue of the rows handed over after their commit,
// in seq order.
type handoff struct {
	max  int // rows it holds at most (handoffRows)
	mu   sync.Mutex
	rows []row
	// lost is set when rows were dropped because the queue was full:
	// the table holds rows the queue lacks.
	lost bool
}

// push queues the rows of a commit (sqldb.DB.OnHand's receiver: the
// writer goroutine calls it, and it must not block).
func (h *handoff) push(v any) {
	rows, ok := v.([]row)
	if !ok {
		return
	}
	now := time.Now()
	for i := range rows {
		rows[i].handed = now
	}
	h.mu.Lock()
	if len(h.rows)+len(rows) > h.max {
		h.lost = true
	} else {
		h.rows = append(h.rows, rows...)
	}
	h.mu.Unlock()
}

// take returns, and removes from the queue, up to n rows whose seqs
// follow after one by one, dropping the rows up to after (read from the
// table meanwhile). Without such rows ok is false when the table must be
// read: rows were lost, or the queue's first row does not follow after (a
// gap). An empty queue with nothing lost is ok: no row was committed since.
func (h *handoff) take(after int64, n int) (rows []row, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	i := 0
	for i < len(h.rows) && h.rows[i].seq <= after {
		i++
	}
	h.drop(i)
	if len(h.rows) == 0 || h.rows[0].seq != after+1 {
		// Nothing follows after in the queue. Rows dropped from a full
		// queue came after every row it holds: now they are next.
		lost := h.lost
		h.lost = false
		return nil, len(h.rows) == 0 && !lost
	}
	k := 1
	for k < min(n, len(h.rows)) && h.rows[k].seq == h.rows[k-1].seq+1 {
		k++
	}
	rows = append([]row(nil), h.rows[:k]...)
	h.drop(k)
	return rows, true
}

// drop removes the first k rows of the queue.
func (h *handoff) drop(k int) {
	if k == 0 {
		return
	}
	n := copy(h.rows, h.rows[k:])
	clear(h.rows[n:])
	h.rows = h.rows[:n]
}
