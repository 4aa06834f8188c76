package bench

import "testing"

func TestOutOfOrder(t *testing.T) {
	acked := []string{"a", "b", "c", "d"}
	for _, c := range []struct {
		read []string
		want int
	}{
		{[]string{"a", "b", "c", "d"}, 0},
		{[]string{"a", "x", "c", "d"}, 0}, // b lost (counted elsewhere), x not acked
		{[]string{"b", "a", "c", "d"}, 1},
		{[]string{"d", "a", "b", "c"}, 3},
	} {
		if got := outOfOrder(acked, c.read); got != c.want {
			t.Errorf("outOfOrder(%v) = %d, want %d", c.read, got, c.want)
		}
	}
}
