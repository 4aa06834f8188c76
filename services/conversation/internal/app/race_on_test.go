//go:build race

package app

// raceEnabled: the race detector is on (it changes what allocates, so
// allocation counts are not asserted).
const raceEnabled = true
