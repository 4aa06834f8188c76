package gateway

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type markedUpTo struct {
	conv string
	seq  int64
}

// A busy thread is marked at once, then at most once per interval with the
// newest sequence; the end of the stream marks what is pending without
// waiting for the interval.
func TestDeliveryMarksSpacedAndCoalesced(t *testing.T) {
	calls := make(chan markedUpTo, 16)
	d := newDeliveryMarks(func(conv string, seq int64) { calls <- markedUpTo{conv, seq} })
	d.interval = time.Hour // no second round can start before wait

	d.add("conversations/a", 1)
	require.Equal(t, markedUpTo{"conversations/a", 1}, <-calls, "the first message after a quiet spell is marked at once")

	for seq := int64(2); seq <= 9; seq++ {
		d.add("conversations/a", seq)
	}
	d.add("conversations/b", 3)
	d.add("conversations/a", 5) // older than what is pending: nothing
	select {
	case c := <-calls:
		t.Fatalf("marked %v within the interval", c)
	default:
	}

	d.wait()
	close(calls)
	var got []markedUpTo
	for c := range calls {
		got = append(got, c)
	}
	require.ElementsMatch(t, []markedUpTo{{"conversations/a", 9}, {"conversations/b", 3}}, got,
		"one call per thread with its newest sequence, at the end of the stream")
}
