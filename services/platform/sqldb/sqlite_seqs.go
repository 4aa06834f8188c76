package sqldb

import (
	"context"
	"errors"
)

// Seqs takes n consecutive numbers of the SQLite database's counter name
// and returns the first of them. The writer goroutine holds its counters
// in memory: a counter starts, the first time the process takes from it,
// after highest (the highest number the database holds already, read in
// the transaction) and goes up by n with each call. A job that rolls back,
// or a batch whose commit fails, gives its numbers back, so the numbers of
// the committed rows follow one another as AUTOINCREMENT's do.
//
// It is for a table's keys that must go up within a process while the rows
// that held the highest ones are deleted — the outbox's seq, which the
// relay deletes up to the last one it published — without AUTOINCREMENT,
// which writes its sqlite_sequence row (a WAL frame per commit) for it.
// Keys taken otherwise (an INSERT that leaves the key to SQLite) can clash
// with the counter: after such a clash, ResetSeqs makes the next Seqs read
// highest again. On PostgreSQL it is an error (use a sequence).
func (t *Tx) Seqs(ctx context.Context, name string, n int, highest func(context.Context, *Tx) (int64, error)) (int64, error) {
	if t.db == nil || t.db.seqs == nil {
		return 0, errors.New("sqldb: Seqs is for SQLite")
	}
	last, ok := t.db.seqs[name]
	if !ok {
		h, err := highest(ctx, t)
		if err != nil {
			return 0, err
		}
		last = h
	}
	t.seqUndo = append(t.seqUndo, seqUndo{name: name, last: t.db.seqs[name], had: ok})
	t.db.seqs[name] = last + int64(n)
	return last + 1, nil
}

// ResetSeqs forgets the counter name: the next Seqs starts after highest
// again (SQLite; nothing on PostgreSQL).
func (t *Tx) ResetSeqs(name string) {
	if t.db == nil || t.db.seqs == nil {
		return
	}
	last, ok := t.db.seqs[name]
	t.seqUndo = append(t.seqUndo, seqUndo{name: name, last: last, had: ok})
	delete(t.db.seqs, name)
}

// seqUndo is a counter as it was before a Seqs or ResetSeqs of the
// transaction.
type seqUndo struct {
	name string
	last int64
	had  bool // the counter was known (else it was not yet read)
}

// undoSeqs puts the counters back as they were when the transaction had
// made mark changes to them (a rolled-back job's, or all of a failed
// batch's).
func (t *Tx) undoSeqs(mark int) {
	for i := len(t.seqUndo) - 1; i >= mark; i-- {
		u := t.seqUndo[i]
		if u.had {
			t.db.seqs[u.name] = u.last
		} else {
			delete(t.db.seqs, u.name)
		}
	}
	t.seqUndo = t.seqUndo[:mark]
}
