package ingest

import (
	"context"
	"errors"
	"time"

	"github.com/clinicchat/clinicchat/services/audit/internal/app"
)

// group appends the batches of every stream's consumer to the log together:
// one transaction (one durable commit, the practices' tree hashes written
// once) for whatever all of them handed over since the last commit. Its
// one goroutine (run) commits at once when the last commit is more than
// interval ago, else waits until it is, gathering more meanwhile: while
// events keep coming the log commits at most once per interval, and an
// event after a quiet spell waits for nothing. It does not wait when
// maxGroup events wait, or when a stream hands over a full batch (full
// events or more): that stream has more waiting than a batch carries, and
// since each consumer hands over one batch per commit, waiting out the
// interval would cap the log's rate at one batch per stream per interval
// (256 events per 100 ms on delivery's stream, which 32 senders outrun).
// Each consumer's batch is acked only after the commit that holds it.
//
// If a shared transaction fails, each batch in it is tried again alone, so
// that one stream's failing batch (redelivered until it passes) never holds
// back the other streams.
type group struct {
	sink     Sink
	interval time.Duration
	full     int // a batch this long commits without waiting out interval
	reqs     chan *groupReq
	stopped  chan struct{} // closed when run returns
}

var errStopped = errors.New("audit log writer stopped")

// maxGroup is how many events one shared transaction gathers at most before
// it commits without waiting for the rest of the interval.
const maxGroup = 1024

type groupReq struct {
	in   []app.Arrival
	done chan error
}

func newGroup(sink Sink, interval time.Duration, full int) *group {
	return &group{sink: sink, interval: interval, full: full, reqs: make(chan *groupReq), stopped: make(chan struct{})}
}

// ingest hands in to the group and returns the outcome of its commit.
func (g *group) ingest(ctx context.Context, in []app.Arrival) error {
	if len(in) == 0 {
		return nil
	}
	r := &groupReq{in: in, done: make(chan error, 1)}
	select {
	case g.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-g.stopped:
		return errStopped
	}
	return <-r.done
}

// run commits what the consumers hand over until ctx ends; the batches it
// holds then are answered with ctx's error (not acked: redelivered).
func (g *group) run(ctx context.Context) {
	defer close(g.stopped)
	var last time.Time
	var pending []*groupReq
	events, hurry := 0, false
	add := func(r *groupReq) {
		pending = append(pending, r)
		events += len(r.in)
		hurry = hurry || events >= maxGroup || len(r.in) >= g.full
	}
	answer := func(err error) {
		for _, r := range pending {
			r.done <- err
		}
		pending = pending[:0]
	}
	for {
		select {
		case r := <-g.reqs:
			add(r)
		case <-ctx.Done():
			return
		}
		if wait := g.interval - time.Since(last); wait > 0 && !hurry {
			t := time.NewTimer(wait)
		gather:
			for {
				select {
				case r := <-g.reqs:
					if add(r); hurry {
						t.Stop()
						break gather
					}
				case <-t.C:
					break gather
				case <-ctx.Done():
					t.Stop()
					answer(ctx.Err())
					return
				}
			}
		}
		// Whoever is ready now joins too.
	drain:
		for events < maxGroup {
			select {
			case r := <-g.reqs:
				add(r)
			default:
				break drain
			}
		}
		last = time.Now()
		g.commit(ctx, pending)
		clear(pending) // let the batches go
		pending, events, hurry = pending[:0], 0, false
	}
}

// commit appends every request's events in one transaction, or, if that
// fails, each request's alone, and answers each request.
func (g *group) commit(ctx context.Context, reqs []*groupReq) {
	if len(reqs) == 1 {
		reqs[0].done <- g.sink.IngestAll(ctx, reqs[0].in)
		return
	}
	var all []app.Arrival
	for _, r := range reqs {
		all = append(all, r.in...)
	}
	if err := g.sink.IngestAll(ctx, all); err == nil {
		for _, r := range reqs {
			r.done <- nil
		}
		return
	}
	for _, r := range reqs {
		r.done <- g.sink.IngestAll(ctx, r.in)
	}
}
