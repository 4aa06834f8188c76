package bench

import (
	"context"
	"testing"
	"time"
)

// A send whose time has passed starts at once, and one whose time is ahead
// waits exactly until it: no send of the schedule is dropped or pushed back
// by the ones before it coming late (as a time.Ticker's dropped ticks did).
func TestPacerKeepsTheScheduleWhenBehind(t *testing.T) {
	ctx := context.Background()
	var slept []time.Duration
	p := pacer{
		// 100 sends of 10 ms due so far: the run is 1 s behind schedule
		// from its start (a slow ack, a late wake-up).
		start:    time.Now().Add(-time.Second),
		interval: 10 * time.Millisecond,
		sleep: func(_ context.Context, d time.Duration) bool {
			slept = append(slept, d)
			return true
		},
	}
	for i := int64(1); i <= 100; i++ {
		if !p.wait(ctx, i) {
			t.Fatalf("send %d: wait gave up with the context live", i)
		}
	}
	if len(slept) != 0 {
		t.Fatalf("sends already due waited %d times (%v): the run falls behind its rate", len(slept), slept)
	}
	// The 201st send is due 1 s from now: it waits about that long, once.
	if !p.wait(ctx, 201) {
		t.Fatal("send 201: wait gave up")
	}
	if len(slept) != 1 || slept[0] < 900*time.Millisecond || slept[0] > time.Second {
		t.Fatalf("send 201 waited %v, want one wait of ~1s (its place in the schedule)", slept)
	}
}

func TestPacerFlatOutAndCancelled(t *testing.T) {
	never := func(context.Context, time.Duration) bool { t.Fatal("slept flat out"); return false }
	if !(pacer{sleep: never}).wait(context.Background(), 1e6) {
		t.Fatal("flat out: wait gave up")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := pacer{start: time.Now().Add(time.Hour), interval: time.Millisecond, sleep: sleepCtx}
	if p.wait(ctx, 1) {
		t.Fatal("a cancelled run's wait for a send an hour ahead went on")
	}
	p.start = time.Now().Add(-time.Hour)
	if p.wait(ctx, 1) {
		t.Fatal("a cancelled run's send that is due went on")
	}
}
