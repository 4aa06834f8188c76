package ids

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Ordered ids are valid resource-name segments of New's length, distinct, and
// sort in the order of their times.
func TestNewOrdered(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 21, 0, 0, 0, time.UTC)
	var got []string
	for i := range 1000 {
		id := NewOrdered(t0.Add(time.Duration(i) * 7 * time.Millisecond))
		require.Len(t, id, len(New()))
		require.True(t, Valid(id), id)
		got = append(got, id)
	}
	require.True(t, slices.IsSorted(got), "ids sort by time")
	same := []string{NewOrdered(t0), NewOrdered(t0)}
	require.NotEqual(t, same[0], same[1], "one millisecond, two ids")
	require.Equal(t, same[0][:9], same[1][:9], "one millisecond, one prefix")
}
