package natsx

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

func noEnd(error) {}

// ErrPoison marks a message that can never be handled (undecodable): it is
// terminated with a log line instead of being redelivered forever.
var ErrPoison = errors.New("poison message")

// Handler handles one message. It returns nil after its own commit.
type Handler func(ctx context.Context, msg jetstream.Msg) error

// ConsumerSpec declares a durable consumer.
type ConsumerSpec struct {
	Stream         string
	Durable        string
	FilterSubjects []string
	// MaxAckPending bounds the messages in flight (default 256).
	MaxAckPending int
	// Concurrency is how many messages are handled at once (default 1: in
	// order). Above 1 the handler must not depend on order (idempotent,
	// monotonic watermarks); concurrent handlers' writes group-commit.
	Concurrency int
	// Positions, for a ConsumeBatch of a SoleConsumer (the all-in-one):
	// the durable is kept in the server's memory and its position in the
	// service's database (Positions), instead of a state file. Ignored
	// elsewhere (nil: a file-stored durable).
	Positions *Positions
}

// durable creates or updates spec's durable, explicitly acked consumer
// (nil, nil when ctx ended while starting). Its filter is spec's, narrowed
// (Narrow) past its ack floor; with wide, a durable left with several
// filter subjects that is more than CatchUpPending events behind is
// created or updated with none (catchUp), and the narrowed filter is
// returned for the caller to apply to what is delivered and to set once
// caught up.
func durable(ctx context.Context, js jetstream.JetStream, spec ConsumerSpec, wide bool) (jetstream.Consumer, catchUp, error) {
	return durableAcked(ctx, js, spec, wide, false)
}

// durableAcked is durable; with ackAll, the durable is spec.Durable +
// AckAllSuffix with the AckAll policy (sole consumers, ConsumeBatch),
// created from the explicitly acked spec.Durable a previous version left:
// at its ack floor + 1, that durable deleted once the new one exists (a
// crash in between leaves both; the next start deletes the old one). What
// the old durable had acked past its floor is delivered again: the
// handlers are idempotent. An AckAll durable that a previous run left with
// deliveries unacknowledged is reset to its ack floor + 1, so that they
// are delivered again before anything after them is acked (an ack of a
// later event would ack them too).
func durableAcked(ctx context.Context, js jetstream.JetStream, spec ConsumerSpec, wide, ackAll bool) (jetstream.Consumer, catchUp, error) {
	if spec.MaxAckPending == 0 {
		spec.MaxAckPending = 256
	}
	// The pre-tenant forms that cannot match past what the durable has
	// handled are left out (an existing durable is updated in place: its
	// position and acks stay).
	// These look-ups only choose the filter: a failed one keeps spec's.
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var floor uint64
	pending := uint64(0)
	known := false
	cfg := jetstream.ConsumerConfig{
		Durable:       spec.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1,
		MaxAckPending: spec.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	oldDurable := ""
	if ackAll {
		cfg.Durable, cfg.AckPolicy = spec.Durable+AckAllSuffix, jetstream.AckAllPolicy
		// These look-ups decide where the durable starts: a failure is
		// an error (starting from the stream's first event instead
		// would hand every event over again).
		switch c, err := js.Consumer(pctx, spec.Stream, cfg.Durable); {
		case err == nil:
			ci := c.CachedInfo()
			floor, pending, known = ci.AckFloor.Stream, ci.NumPending, true
			// Its start cannot be updated: keep the one it was created with.
			cfg.DeliverPolicy, cfg.OptStartSeq = ci.Config.DeliverPolicy, ci.Config.OptStartSeq
		case errors.Is(err, jetstream.ErrConsumerNotFound):
		default:
			return nil, catchUp{}, ctxOr(ctx, fmt.Errorf("consumer %s on %s: %w", cfg.Durable, spec.Stream, err))
		}
		switch c, err := js.Consumer(pctx, spec.Stream, spec.Durable); {
		case err == nil:
			oldDurable = spec.Durable
			if !known {
				ci := c.CachedInfo()
				floor, pending, known = ci.AckFloor.Stream, ci.NumPending+uint64(ci.NumAckPending), true
				if floor > 0 {
					cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, floor+1
				}
			}
		case errors.Is(err, jetstream.ErrConsumerNotFound):
		default:
			return nil, catchUp{}, ctxOr(ctx, fmt.Errorf("consumer %s on %s: %w", spec.Durable, spec.Stream, err))
		}
	} else if c, err := js.Consumer(pctx, spec.Stream, spec.Durable); err == nil {
		floor, pending, known = c.CachedInfo().AckFloor.Stream, c.CachedInfo().NumPending, true
	}
	cu := catchUp{filter: Narrow(pctx, js, spec.Stream, spec.FilterSubjects, floor)}
	if wide && len(cu.filter) > 1 {
		if !known {
			if s, err := js.Stream(pctx, spec.Stream); err == nil {
				pending = s.CachedInfo().State.Msgs
			}
		}
		cu.wide = pending > CatchUpPending
	}
	cfg.FilterSubjects = cu.filter
	if cu.wide {
		cfg.FilterSubjects = nil
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, spec.Stream, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return nil, cu, nil
		}
		return nil, cu, fmt.Errorf("consumer %s on %s: %w", cfg.Durable, spec.Stream, err)
	}
	if !ackAll {
		return cons, cu, nil
	}
	if oldDurable != "" {
		if err := js.DeleteConsumer(ctx, spec.Stream, oldDurable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, cu, ctxOr(ctx, fmt.Errorf("consumer %s on %s replaced by %s, not deleted: %w", oldDurable, spec.Stream, cfg.Durable, err))
		}
	}
	if cons.CachedInfo().NumAckPending > 0 {
		if _, err := js.ResetConsumer(ctx, spec.Stream, cfg.Durable); err != nil {
			return nil, cu, ctxOr(ctx, fmt.Errorf("consumer %s on %s not reset to its ack floor: %w", cfg.Durable, spec.Stream, err))
		}
	}
	return cons, cu, nil
}

// AckAllSuffix ends the name of a ConsumeBatch durable of a SoleConsumer
// (AckAll policy): a durable's ack policy cannot be changed in place, so
// it is a durable of its own, created from the explicitly acked one.
const AckAllSuffix = "-ackall"

// ctxOr is nil once ctx has ended (stopped while starting), else err.
func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// CatchUpPending is how far behind (events pending) a ConsumeBatch durable
// with several filter subjects must be to catch up unfiltered. Past its
// ack floor JetStream finds such a consumer's next event by intersecting
// every subject of a block with the filter (~1 µs per thread of the block
// per event: 0.9 ms at 1,000 threads); unfiltered, it is delivered every
// event (~35 µs each, the others acked without the handler), and is
// narrowed again in place once it has caught up. At the head, the filter
// costs nothing of the kind and saves the deliveries.
var CatchUpPending uint64 = 1000

// catchUp is how a durable was started: filter is what its handler is
// given (the spec's, narrowed); wide, that the consumer delivers every
// event of the stream until it is caught up.
type catchUp struct {
	filter []string
	wide   bool
}

// matches reports whether subject matches one of filter (every subject
// when filter is empty).
func matches(filter []string, subject string) bool {
	if len(filter) == 0 {
		return true
	}
	for _, f := range filter {
		if subjectMatch(f, subject) {
			return true
		}
	}
	return false
}

// subjectMatch is NATS subject matching of a literal subject against a
// filter with '*' and '>' tokens.
func subjectMatch(filter, subject string) bool {
	for {
		ft, frest, fmore := strings.Cut(filter, ".")
		if ft == ">" {
			return subject != ""
		}
		st, srest, smore := strings.Cut(subject, ".")
		if ft != "*" && ft != st {
			return false
		}
		if !fmore || !smore {
			return fmore == smore
		}
		filter, subject = frest, srest
	}
}

// Consume runs a durable, explicitly acked consumer until ctx ends. The
// handler's success acks; ErrPoison terminates; any other error naks with a
// growing delay so the message comes back. A message with a traceparent
// header is handled in a consumer span, child of the span that wrote the
// event (telemetry).
func Consume(ctx context.Context, js jetstream.JetStream, log *zap.Logger, spec ConsumerSpec, h Handler) error {
	cons, _, err := durable(ctx, js, spec, false)
	if err != nil || cons == nil {
		return err // nil: stopped while starting
	}
	log = log.With(zap.String(logkeys.Stream, spec.Stream), zap.String(logkeys.Consumer, spec.Durable))
	handle := func(m jetstream.Msg) {
		hctx, end := ctx, noEnd
		if hdr := m.Headers(); hdr != nil {
			// The event carries the trace of the request that caused it.
			hctx, end = telemetry.StartConsumer(ctx, hdr, spec.Durable, m.Subject())
		}
		err := h(hctx, m)
		end(err)
		settleMsg(ctx, log, m, err)
	}
	sem := make(chan struct{}, max(spec.Concurrency, 1))
	var inflight sync.WaitGroup
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if spec.Concurrency <= 1 {
			handle(m)
			return
		}
		sem <- struct{}{}
		inflight.Add(1)
		go func() {
			defer func() { <-sem; inflight.Done() }()
			handle(m)
		}()
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("consume %s: %w", spec.Durable, err)
	}
	<-ctx.Done()
	cc.Drain()
	<-cc.Closed()
	inflight.Wait()
	return nil
}

// Permanent reports an error the JetStream server answered (a refused
// consumer or stream configuration, an unsupported feature): retrying the
// same request cannot succeed. Connection loss and timeouts are not permanent.
func Permanent(err error) bool {
	var api *jetstream.APIError
	if !errors.As(err, &api) {
		return false
	}
	return api.Code >= 400 && api.Code < 500 && api.Code != 408
}
