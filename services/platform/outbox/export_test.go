package outbox

import (
	"context"
	"slices"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/clinicchat/clinicchat/services/platform/sqldb"
)

// AddNow is Add with the INSERT run at once, also on PostgreSQL (where
// AddAll sends it with the COMMIT): the row's seq is taken well before its
// transaction commits, the interleaving the relay must handle however short
// the window between the two.
func AddNow(ctx context.Context, tx *sqldb.Tx, id, subject string, msg proto.Message) error {
	return addAll(ctx, tx, []Event{{ID: id, Subject: subject, Msg: msg}}, false)
}

// SetAfterClaim makes r call f after each PostgreSQL round has read its batch.
func SetAfterClaim(r *Relay, f func(ctx context.Context)) { r.afterClaim = f }

// Kicked is the relay's wake-up channel.
func Kicked(r *Relay) <-chan struct{} { return r.kick }

// Round runs one round of r, keeping the PostgreSQL outbox lock (Run's step).
func Round(r *Relay, ctx context.Context) (int, error) { return r.round(ctx, false) }

// SetWaves makes r send every round in waves.
func SetWaves(r *Relay, on bool) { r.waves = on }

// Loaded is how many rows r has read from the table (on SQLite the rest
// were handed over by their commits).
func Loaded(r *Relay) int64 { return r.stats.loaded.Load() }

// SetHandoffRows bounds r's hand-off queue to n rows.
func SetHandoffRows(r *Relay, n int) { r.hand.max = n }

// StreamOf is r's remembered natsx.StreamOf.
func StreamOf(r *Relay, subject string) string { return r.streamOf(subject) }

// OnPublish makes r hand every message it publishes to f instead: a copy
// (r reuses its own), with r's connection. f publishes it (or not) itself.
func OnPublish(r *Relay, f func(m *nats.Msg, nc *nats.Conn) error) {
	nc := r.pub.nc
	r.pub.publish = func(m *nats.Msg) error {
		c := &nats.Msg{Subject: m.Subject, Reply: m.Reply, Data: slices.Clone(m.Data), Header: nats.Header{}}
		for k, v := range m.Header {
			c.Header[k] = slices.Clone(v)
		}
		return f(c, nc)
	}
}

// ProbeSQL is the PostgreSQL relay's look for a row.
const ProbeSQL = probeSQL

// HandedOff is how many sends r's hand-off histogram has observed (rows
// handed over by their commits, timed from the hand-off to being sent).
func HandedOff(r *Relay) uint64 {
	var m dto.Metric
	if err := r.stats.handoff.Write(&m); err != nil {
		return 0
	}
	return m.GetHistogram().GetSampleCount()
}

// SetNoBatches makes r send every row on its own (no fast batches).
func SetNoBatches(r *Relay, on bool) { r.noBatches = on }

// Lingering reports whether r's Run waits for a wake-up holding the
// PostgreSQL outbox lock, between rounds.
func Lingering(r *Relay) bool { return r.lingering.Load() }

// Pacing reports whether r's Run, woken, waits for the rest of its Pace
// before the next round.
func Pacing(r *Relay) bool { return r.pacing.Load() }
