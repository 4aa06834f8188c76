package sqldb

import "sync"

// NetworkWrites is how many network writes tx's connection has made so far
// (PostgreSQL with BEGIN pipelined; -1 otherwise).
func NetworkWrites(tx *Tx) int {
	if tx.pg == nil || tx.pg.filter == nil {
		return -1
	}
	return tx.pg.filter.writes
}

// PipelineBegin switches a PostgreSQL DB between BEGIN with the first
// statement (the default) and BEGIN on its own (sql.Tx, as before), for
// comparing the two in one process.
func PipelineBegin(d *DB, on bool) { d.pipelined = on }

// WriteCounter reads the network writes of tx's connection (as
// NetworkWrites) at any later time: a write's COMMIT goes after fn returns.
func WriteCounter(tx *Tx) func() int {
	if tx.pg == nil || tx.pg.filter == nil {
		return func() int { return -1 }
	}
	f := tx.pg.filter
	return func() int { return f.writes }
}

// WaitingWrites is how many writes wait for a group-commit lane
// (PostgreSQL): every lane is busy and none has taken them yet.
func WaitingWrites(d *DB) int { return int(d.pgWaiting.Load()) }

// AloneWrites is how many writes a group-commit lane gave back to run
// again alone (a lock timeout, a serialization failure, a deadlock).
func AloneWrites(d *DB) int64 { return d.pgAlone.Load() }

// CollectHanded registers a receiver for topic's handed-over values (all
// strings) on d, and returns what it has received so far, in order.
func CollectHanded(d *DB, topic string) func() []string {
	var mu sync.Mutex
	var got []string
	d.OnHand(topic, func(v any) {
		mu.Lock()
		got = append(got, v.(string))
		mu.Unlock()
	})
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
}
