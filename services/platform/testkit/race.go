//go:build race

package testkit

// RaceEnabled reports that the race detector is on: it changes what
// allocates, so tests do not assert allocation figures under it.
const RaceEnabled = true
