package gateway

import (
	"context"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
)

// Streams on taken-over connections that park in the idle poller
// (idlepoll_linux.go) while they have nothing to write.

// parkingStreams counts the process's open streams that park while idle
// (startParked).
var parkingStreams atomic.Int64

// ParkingStreams is how many event streams of this process's gateways are
// open and park while idle (hijack.go): they hold no goroutine stack, but
// their heap (~2.6 KiB each while idle; BENCHMARKS.md, idle23), which a
// memory governor may allow for as it does for stacks.
func ParkingStreams() int64 { return parkingStreams.Load() }

// resumers run woken parked streams (hijackedStream.wake) on goroutines
// kept for it: a resume hands its stream to an idle one, or starts one when
// none is idle; after a resume a goroutine waits for the next unless max
// already wait. A stream's write renders its events several calls deep
// (~16 KiB of stack), so a fresh goroutine per wake grew its stack, copying
// it, on nearly every wake (runtime.newstack ~3 % of the all-in-one's CPU
// at 8 senders; BENCHMARKS.md, alloc25); a kept one has it grown already.
// At most max goroutines wait, so idle streams still hold none of their
// own.
type resumers struct {
	next chan func()
	idle atomic.Int32
	max  int32
}

// streamResumers runs the process's parked streams' resumes.
var streamResumers = newResumers(8)

func newResumers(max int32) *resumers { return &resumers{next: make(chan func()), max: max} }

// run calls f on a waiting goroutine, or on a new one when none waits.
func (r *resumers) run(f func()) {
	select {
	case r.next <- f:
	default:
		go r.work(f)
	}
}

func (r *resumers) work(f func()) {
	for {
		f()
		f = nil // hold no stream while waiting
		if r.idle.Add(1) > r.max {
			r.idle.Add(-1)
			return
		}
		f = <-r.next
		r.idle.Add(-1)
	}
}

// startParked serves a stream on a taken-over connection that parks in
// the idle poller while it has nothing to do (hijack.go): from here it is
// served by a goroutine only while it writes or looks.
func (st *eventStream) startParked(end func(), resume *cursor) {
	hs := st.raw
	ctx, cancel := context.WithCancel(context.Background())
	var expiry *time.Timer
	st.finish = func() {
		if st.finished {
			return
		}
		st.finished = true
		parkingStreams.Add(-1)
		if expiry != nil {
			expiry.Stop()
		}
		cancel()
		st.shut()
		hs.close()
		end()
	}
	hs.resume = func() { st.step(ctx) }
	parkingStreams.Add(1)
	defer st.recoverParked()
	cur, ok := st.open(ctx, hs.sw, resume)
	if !ok {
		st.finish()
		return
	}
	st.cur = cur
	if !st.id.Expiry.IsZero() {
		expiry = time.AfterFunc(time.Until(st.id.Expiry), hs.expire)
	}
	// What was queued while it opened, then as woken.
	if !st.drain(ctx, hs.sw, &st.cur) {
		st.finish()
		return
	}
	st.step(ctx)
}

// step writes what is queued and what is due, then parks the stream, or
// ends it. One goroutine at a time runs it (hijackedStream.state). As run
// does, it takes the wake-up before it drains: a wake-up left for after
// the drain would drain again at once and write, apart, what was queued
// meanwhile without one (an event held for the stream's next wake-up,
// hubwake.go).
func (st *eventStream) step(ctx context.Context) {
	defer st.recoverParked()
	hs, sw := st.raw, st.raw.sw
	for {
		out, ok := hs.look(st)
		if !ok {
			parked, err := hs.park()
			if err != nil {
				st.s.log.Warn("event stream: park the idle stream", zap.Error(err))
				st.finish()
				return
			}
			if parked {
				return // st belongs to the next wake's goroutine
			}
			continue // woken since it looked
		}
		switch out {
		case waitEnd:
			st.finish()
			return
		case waitExpired:
			_ = sw.comment("token expired; sign in again")
			st.finish()
			return
		case waitWoken:
			if !st.woken(sw, &st.cur) {
				st.finish()
				return
			}
		}
		if !st.drain(ctx, sw, &st.cur) {
			st.finish()
			return
		}
		if hook := stepDrained.Load(); hook != nil {
			(*hook)(st)
		}
	}
}

// stepDrained, when set (tests), runs after each of step's drains: what a
// test does there happens before the stream looks again.
var stepDrained atomic.Pointer[func(*eventStream)]

// recoverParked, as net/http would: a panic ends this stream, not the
// process.
func (st *eventStream) recoverParked() {
	if p := recover(); p != nil {
		st.s.log.Error("panic", zap.String(logkeys.ErrorID, ids.New()), zap.String("route", routeEvents),
			zap.Any("panic", p), zap.Stack("stack"))
		st.finish()
	}
}
