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
	st.step(ctx)
}

// step writes what is queued and what is due, then parks the stream, or
// ends it. One goroutine at a time runs it (hijackedStream.state).
func (st *eventStream) step(ctx context.Context) {
	defer st.recoverParked()
	hs, sw := st.raw, st.raw.sw
	for {
		if !st.drain(ctx, sw, &st.cur) {
			st.finish()
			return
		}
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
			continue
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
	}
}

// recoverParked, as net/http would: a panic ends this stream, not the
// process.
func (st *eventStream) recoverParked() {
	if p := recover(); p != nil {
		st.s.log.Error("panic", zap.String(logkeys.ErrorID, ids.New()), zap.String("route", routeEvents),
			zap.Any("panic", p), zap.Stack("stack"))
		st.finish()
	}
}
