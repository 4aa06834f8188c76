package natsx

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TenantGrace is how long a stream must have held tenant-form events, and
// how long ago its last pre-tenant event of a base must have been stored,
// before Narrow leaves that base's pre-tenant form out of a filter. An
// older version's outbox rows are relayed, on their old subjects, within
// seconds of the first start of a version with tenant subjects (the relay
// publishes in outbox order, and a stream has one service as its writer),
// and an older replica of a rolling upgrade keeps publishing them until it
// stops: an hour covers both with room.
var TenantGrace = time.Hour

// Narrow returns filter (as built by Filter, or with another tenant form
// of a base such as CreatedWithAttachments' base.*.*) without the pre-tenant forms
// that no message can match any more past position (the stream sequence
// below which the consumer has handled everything: a durable's ack floor,
// an ephemeral's start minus one). A pre-tenant form is left out when
//
//   - the stream has held tenant-form events for TenantGrace (its first
//     one is that old: every writer's outbox has been relayed by a version
//     that publishes the tenant form), and
//   - the stream's last event on that pre-tenant subject, if any, is at or
//     below position and older than TenantGrace.
//
// It keeps filter whole when it cannot tell (the stream unreachable).
// With one base left, the consumer has a single filter subject: JetStream
// then finds a lagging consumer's next message without intersecting every
// subject of a block with the filter (BenchmarkCatchUp: ~30 µs per event
// instead of ~0.9 ms at 1,000 threads). A later start narrows what an
// earlier one kept, once the old events have aged out.
func Narrow(ctx context.Context, js jetstream.JetStream, stream string, filter []string, position uint64) []string {
	var old []string
	for _, f := range filter {
		if !strings.ContainsAny(f, "*>") && slices.ContainsFunc(filter, func(g string) bool { return strings.HasPrefix(g, f+".") }) {
			old = append(old, f)
		}
	}
	if len(old) == 0 {
		return filter
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return filter
	}
	// The tenant form of the stream's subjects: its base's four tokens and
	// at least one more (prefix.service.kind.verb.practice[...]).
	service := strings.Join(strings.SplitN(old[0], ".", 3)[:2], ".")
	first, err := s.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(service+".*.*.>"))
	if err != nil || time.Since(first.Time) < TenantGrace {
		return filter // no tenant-form event yet, or too recent
	}
	drop := make(map[string]bool, len(old))
	for _, b := range old {
		last, err := s.GetLastMsgForSubject(ctx, b)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			drop[b] = true
		case err != nil:
		case last.Sequence <= position && time.Since(last.Time) >= TenantGrace:
			drop[b] = true
		}
	}
	if len(drop) == 0 {
		return filter
	}
	out := make([]string, 0, len(filter)-len(drop))
	for _, f := range filter {
		if !drop[f] {
			out = append(out, f)
		}
	}
	return out
}
