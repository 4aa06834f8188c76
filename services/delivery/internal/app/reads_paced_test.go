package app_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/delivery/internal/app"
)

// A batch smaller than the consumer's largest waits for what is left of the
// window after it is handled (so the next batch gathers); a full batch goes
// on at once (a backlog is never slowed); the handler's results pass through.
func TestPacedWaitsOnlyAfterSmallBatches(t *testing.T) {
	const window, max = 10 * time.Millisecond, 4
	fail := errors.New("x")
	var handled []int
	h := func(_ context.Context, msgs []jetstream.Msg) []error {
		handled = append(handled, len(msgs))
		return []error{nil, fail}[:min(2, len(msgs))]
	}
	var waits []time.Duration
	p := app.Paced(h, window, max, func(_ context.Context, d time.Duration) { waits = append(waits, d) })

	errs := p(context.Background(), make([]jetstream.Msg, 2))
	require.Equal(t, []error{nil, fail}, errs)
	require.Len(t, waits, 1, "a small batch waits")
	require.Positive(t, waits[0])
	require.LessOrEqual(t, waits[0], window, "never more than the window after the batch's start")

	p(context.Background(), make([]jetstream.Msg, max))
	require.Len(t, waits, 1, "a full batch does not wait")
	require.Equal(t, []int{2, max}, handled)
}

// Several markReads of one thread that arrive together (one batch, merged
// into one advance) and others in later batches, a replay among them, turn
// every message READ with exactly one message.updated per advance, each
// message in one of them, and the thread's receipts leave in message order (the outbox's order is the
// relay's publishing order).
func TestReadConsumerCoalescedReceiptsInOrderOnce(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	a, db, staff := f.app, f.db, f.staff
	const n = 12
	for i := range n {
		_, err := a.Send(staff, app.SendRequest{Parent: "conversations/c1", Text: "m", RequestID: fmt.Sprint(i)})
		require.NoError(t, err)
	}
	var start int
	require.NoError(t, db.QueryRow(ctx, `SELECT COALESCE(MAX(seq), 0) FROM outbox`).Scan(&start))

	waited := 0
	consume := app.Paced(a.HandleConversationReads, time.Hour, 32, func(context.Context, time.Duration) { waited++ })
	for _, batch := range [][]int64{{1, 2, 3}, {3, 5, 4}, {2}, {6, 7, 8, 9, 10, 11}, {12, 12}} {
		msgs := make([]jetstream.Msg, len(batch))
		for i, upTo := range batch {
			msgs[i] = readEvent(t, "patients/pat", "patient", upTo)
		}
		for i, err := range consume(ctx, msgs) {
			require.NoError(t, err, "receipt %d of %v", i, batch)
		}
	}
	require.Equal(t, 5, waited, "every batch was small")

	var events int
	require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM outbox WHERE seq > ?`, start).Scan(&events))
	require.Equal(t, 4, events, "one event per advance: 1-3, 4-5, 6-11, 12 (the batch of 2 changed nothing)")
	seqs := statusSeqs(t, db, start)
	want := make([]int32, n)
	for i := range want {
		want[i] = int32(i + 1)
	}
	require.Equal(t, want, seqs, "one READ receipt per message, in message order")
}
