//go:build race

package sqldb_test

// raceEnabled: the race detector is on (it changes what allocates, so
// allocation figures are not asserted).
const raceEnabled = true
