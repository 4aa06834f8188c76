// Package ingest feeds the audit log from NATS JetStream: one durable consumer
// per clinicchat stream, every subject but the kinds the audit skips
// (domain.NonActionSubjects and domain.SystemEchoSubjects); each message is decoded as a
// typev1.EventEnvelope (field 1 of every event is its EventMeta) and appended
// before it is acked. Nothing but the meta is read: message text and other
// PHI in the rest of a payload are discarded undecoded.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/audit/internal/app"
	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/eventwire"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/logkeys"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// Sink appends a batch of events in one transaction (app.App.IngestAll).
type Sink interface {
	IngestAll(ctx context.Context, in []app.Arrival) error
}

// MaxBatch is how many events of one stream are handed to the log at once
// at most. A stream's consumer hands over one batch per commit; a full one
// (a backlog) commits without waiting out DefaultCommitInterval (group), so
// the interval spaces the commits of a steady flow but never caps the rate.
const MaxBatch = 512

// maxAckPending is each audit consumer's bound on events in flight: room
// for a full batch beside the acks of the last ones still on their way (the
// acks are not awaited), so a backlog is handed over in full batches.
const maxAckPending = 4 * MaxBatch

// DefaultCommitInterval is the least time between two of the log's commits
// while events keep coming (see group): under load every stream's batches of
// the last interval share one commit; an event after a quiet spell is
// appended at once.
//
// 100 ms (it was 25 ms): each commit writes a page of the actor index per
// actor of its events, whatever their number, and a page or more of each
// other b-tree; at 200 sends/s the log's commits per message went 0.21 →
// 0.055 and its WAL frames per message 3.6 → 1.7, at 8 senders flat out
// 2.1 → 0.8 (BENCHMARKS.md, wal16). An event waits for the log at most this
// long more, well within a second.
const DefaultCommitInterval = 100 * time.Millisecond

// DurablePrefix starts the name of each of the audit service's durable
// consumers ("audit-conversation", "audit-delivery", …).
const DurablePrefix = "audit-"

// Errors that make a message poison (terminated, never redelivered).
var (
	ErrUndecodable = errors.New("payload is not a clinicchat event")
	ErrNoMeta      = errors.New("event has no meta")
	ErrBadMeta     = errors.New("event meta lacks an id, practice or action")
)

// Decode reads the audit entry of an event payload. fallback is the time
// used when the meta carries none (the JetStream publish time).
func Decode(payload []byte, fallback time.Time) (domain.Entry, error) {
	if e, ok := readEntry(payload, fallback); ok {
		return e, nil
	}
	return decodeUnmarshalled(payload, fallback)
}

// decodeUnmarshalled is Decode by unmarshalling the envelope (unknown
// fields discarded): any shape readEntry does not take, and the reading
// readEntry is held to.
func decodeUnmarshalled(payload []byte, fallback time.Time) (domain.Entry, error) {
	var env typev1.EventEnvelope
	if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(payload, &env); err != nil {
		return domain.Entry{}, ErrUndecodable
	}
	m := env.GetMeta()
	if m == nil {
		return domain.Entry{}, ErrNoMeta
	}
	if !ids.Valid(m.GetId()) || m.GetPractice() == "" || m.GetAction() == "" {
		return domain.Entry{}, ErrBadMeta
	}
	e := domain.Entry{
		EventID:   m.GetId(),
		Time:      fallback,
		Practice:  m.GetPractice(),
		Actor:     m.GetActor(),
		ActorRole: m.GetActorRole(),
		Action:    m.GetAction(),
		Resource:  m.GetResource(),
		Outcome:   domain.OutcomeAllowed,
		Detail:    m.GetDetail(),
	}
	if m.GetTime() != nil && m.GetTime().IsValid() {
		e.Time = m.GetTime().AsTime()
	}
	if m.GetOutcome() == typev1.EventMeta_DENIED {
		e.Outcome = domain.OutcomeDenied
	}
	return e.Normalize(), nil
}

// readEntry is Decode of an event of the usual shape, read from the wire
// instead of unmarshalled: the envelope's meta once, each of the meta's
// fields at most once with its own wire type, every string UTF-8, an id, a
// practice and an action. ok is false for anything else (Decode then
// unmarshals it, which decides as before). It makes the entry's strings
// (roles and the usual actions without a copy), not the meta and its time.
func readEntry(payload []byte, fallback time.Time) (domain.Entry, bool) {
	var meta []byte
	seenMeta := false
	for b := payload; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return domain.Entry{}, false
		}
		if num == 1 {
			if typ != protowire.BytesType || seenMeta {
				return domain.Entry{}, false
			}
			v, m := protowire.ConsumeBytes(b[n:])
			if m < 0 {
				return domain.Entry{}, false
			}
			meta, seenMeta = v, true
			b = b[n+m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:]) // the event's other fields: not read
		if m < 0 {
			return domain.Entry{}, false
		}
		b = b[n+m:]
	}
	if !seenMeta {
		return domain.Entry{}, false
	}
	var (
		str  [10][]byte
		seen [10]bool
		at   *timestamppb.Timestamp
		ts   timestamppb.Timestamp
		out  typev1.EventMeta_Outcome
	)
	for b := meta; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num < 1 || num > 9 || seen[num] {
			return domain.Entry{}, false
		}
		seen[num] = true
		b = b[n:]
		switch num {
		case 2: // time
			if typ != protowire.BytesType {
				return domain.Entry{}, false
			}
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return domain.Entry{}, false
			}
			secs, nanos, ok := eventwire.TimestampParts(v)
			if !ok {
				return domain.Entry{}, false
			}
			ts.Seconds, ts.Nanos = secs, nanos
			at = &ts
			b = b[m:]
		case 8: // outcome
			if typ != protowire.VarintType {
				return domain.Entry{}, false
			}
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return domain.Entry{}, false
			}
			out = typev1.EventMeta_Outcome(int32(v))
			b = b[m:]
		default: // strings
			if typ != protowire.BytesType {
				return domain.Entry{}, false
			}
			v, m := protowire.ConsumeBytes(b)
			if m < 0 || !utf8.Valid(v) {
				return domain.Entry{}, false
			}
			str[num] = v
			b = b[m:]
		}
	}
	id := string(str[1])
	if !ids.Valid(id) || len(str[3]) == 0 || len(str[6]) == 0 {
		return domain.Entry{}, false
	}
	e := domain.Entry{
		EventID:  id,
		Time:     fallback,
		Practice: string(str[3]),
		Actor:    string(str[4]),
		ActorRole: known(str[5], auth.RoleDentist, auth.RoleHygienist, auth.RoleAssistant, auth.RoleFrontDesk,
			auth.RolePracticeAdmin, auth.RolePatient, auth.RoleSystem),
		Action: known(str[6], "message.send", "conversation.read", "conversation.view", "conversation.create",
			"notification.request", "message.unlock", "conversation.archive"),
		Resource: string(str[7]),
		Outcome:  domain.OutcomeAllowed,
		Detail:   string(str[9]),
	}
	if at != nil && at.IsValid() {
		e.Time = at.AsTime()
	}
	if out == typev1.EventMeta_DENIED {
		e.Outcome = domain.OutcomeDenied
	}
	return e.Normalize(), true
}

// known is b as a string: one of ks when it is one (no copy).
func known(b []byte, ks ...string) string {
	for _, k := range ks {
		if string(b) == k {
			return k
		}
	}
	return string(b)
}

// Consumers runs the audit service's durable consumers.
type Consumers struct {
	JS   jetstream.JetStream
	Sink Sink
	Log  *zap.Logger
	// CommitInterval is the least time between two commits while events
	// keep coming (0: DefaultCommitInterval).
	CommitInterval time.Duration
	// Positions, when set, keeps the durables' positions in the audit
	// database (the all-in-one: natsx.Positions).
	Positions *natsx.Positions

	group *group
}

// Specs are the consumers: one per stream in natsx.Streams. A stream with
// no skipped kind (domain.Skipped: non-actions and the product's echoes) is
// consumed whole (a subject added later is audited without a change here);
// a stream with one is consumed on each of its other kinds (natsx.Kinds), so
// that JetStream never delivers the skipped kinds to the audit service at
// all. TestEveryKindIsAuditedOrSkipped holds that every kind a service
// publishes is one of the two.
func Specs() []natsx.ConsumerSpec {
	var out []natsx.ConsumerSpec
	for _, sc := range natsx.Streams(natsx.StreamsConfig{}) {
		filter := sc.Subjects
		var actions []string
		skipped := false
		for _, k := range natsx.Kinds() {
			base := natsx.Prefix() + "." + k
			if natsx.StreamOf(base) != sc.Name {
				continue
			}
			if domain.Skipped(k) {
				skipped = true
				continue
			}
			actions = append(actions, base)
		}
		if skipped {
			filter = natsx.Filter(actions...)
		}
		out = append(out, natsx.ConsumerSpec{
			Stream:         sc.Name,
			Durable:        DurablePrefix + natsx.StreamDomain(sc.Name),
			FilterSubjects: filter,
			MaxAckPending:  maxAckPending,
		})
	}
	return out
}

// Run consumes until ctx ends. A consumer that cannot be created while NATS
// is unreachable is retried with backoff; one the server refuses (a
// JetStream API error) ends Run with that error.
func (c *Consumers) Run(ctx context.Context) error {
	interval := c.CommitInterval
	if interval <= 0 {
		interval = DefaultCommitInterval
	}
	c.group = newGroup(c.Sink, interval, MaxBatch) // a full batch commits at once
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { c.group.run(ctx); return nil })
	for _, spec := range Specs() {
		spec.Positions = c.Positions
		g.Go(func() error {
			backoff := 250 * time.Millisecond
			for {
				err := natsx.ConsumeBatch(ctx, c.JS, c.Log, spec, MaxBatch, c.handle)
				if ctx.Err() != nil {
					return nil
				}
				if natsx.Permanent(err) {
					return err // the server refuses the consumer: retrying will not help
				}
				c.Log.Warn("audit consumer not running; retrying", zap.String(logkeys.Stream, spec.Stream),
					zap.Duration("backoff", backoff), zap.Error(err))
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 10*time.Second)
			}
		})
	}
	return g.Wait()
}

// handle decodes a batch (an undecodable message is poison on its own) and
// appends the rest, with what the other streams' consumers hand over at the
// same time, in one transaction; they are acked after its commit.
func (c *Consumers) handle(ctx context.Context, msgs []jetstream.Msg) []error {
	errs := make([]error, len(msgs))
	in := make([]app.Arrival, 0, len(msgs))
	idx := make([]int, 0, len(msgs))
	for i, m := range msgs {
		fallback := time.Now()
		if md, err := m.Metadata(); err == nil {
			fallback = md.Timestamp
		}
		e, err := Decode(m.Data(), fallback)
		if err != nil {
			errs[i] = fmt.Errorf("%w: %w", natsx.ErrPoison, err)
			continue
		}
		in = append(in, app.Arrival{Subject: m.Subject(), Entry: e})
		idx = append(idx, i)
	}
	if err := c.group.ingest(ctx, in); err != nil {
		for _, i := range idx {
			errs[i] = err
		}
	}
	return errs
}
