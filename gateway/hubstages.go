package gateway

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The stages of a message's trip to its recipient's /v1/events stream, as
// clinicchat_gateway_event_stage_seconds{stage} observes them (message.created
// only; the queued and written stages on the recipients' streams only):
//
//	stored    the sender's transaction wrote the event (EventMeta.time) →
//	          JetStream stored it: the rest of the transaction, the commit,
//	          the outbox relay's wake-up, read and publish
//	consumed  stored → the fan-out took it off its consumer
//	queued    the fan-out took it → the recipient's stream took it off its
//	          queue (the stream's goroutine woke up; the render is next)
//	written   taken off the queue → rendered and written to the socket
//
// stored and consumed compare clocks of the writing service, the NATS server
// and the gateway: across hosts they include the hosts' clock offsets (in
// the all-in-one there is one clock).
const (
	stageStored = iota
	stageConsumed
	stageQueued
	stageWritten
	stageCount
)

var stageNames = [stageCount]string{"stored", "consumed", "queued", "written"}

// eventStages is the stage histogram, its children looked up once.
type eventStages struct {
	hist *prometheus.HistogramVec
	by   [stageCount]prometheus.Observer
}

func newEventStages() eventStages {
	st := eventStages{hist: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "clinicchat_gateway_event_stage_seconds",
		Help: "Time each stage of a message.created's trip to its recipient's event stream took " +
			"(stored: written by the sender's transaction → stored by JetStream; consumed: → taken by the fan-out; " +
			"queued: → taken by the recipient's stream; written: → on the recipient's socket).",
		Buckets: []float64{.0001, .00025, .0005, .001, .002, .003, .005, .0075, .01, .015, .02, .03, .05, .1, .25, 1},
	}, []string{"stage"})}
	for i, n := range stageNames {
		st.by[i] = st.hist.WithLabelValues(n)
	}
	return st
}

func (st *eventStages) observe(stage int, d time.Duration) { st.by[stage].Observe(d.Seconds()) }
