package sqldb

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
