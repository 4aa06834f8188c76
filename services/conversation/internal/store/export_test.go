package store

// IdleQueries are the idle sweep's queries (their plans are tested).
var IdleQueries = []string{idleProbeSQL, idleSelectSQL}
