package store

// IdleQueries are the idle sweep's queries (their plans are tested).
var IdleQueries = []string{idleProbeSQL, idleSelectSQL}

// HoldMarkRead counts a MarkRead in flight until release is called, as if
// another caller's markRead were on its way to the writer.
func (s *Store) HoldMarkRead() (release func()) {
	s.markReads.Add(1)
	return func() { s.markReads.Add(-1) }
}
