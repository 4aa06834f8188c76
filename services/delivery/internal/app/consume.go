package app

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// HandleConversationReads is the durable consumer of conversation.read
// (natsx.ConsumeBatch): a participant's read watermark turns the other
// side's messages READ. Every decodable receipt of the batch runs in one
// transaction, acked after its commit (an undecodable one is poison on its
// own). The receipts run grouped by thread and side, in stream order within
// each, so that coalesce merges each thread's run (the store locks the
// messages in key order itself: concurrent batches of other replicas wait
// for each other, never deadlock).
func (a *App) HandleConversationReads(ctx context.Context, msgs []jetstream.Msg) []error {
	errs := make([]error, len(msgs))
	advs := make([]domain.Advance, 0, len(msgs))
	idx := make([]int, 0, len(msgs))
	for i, m := range msgs {
		adv, err := a.readOf(m)
		if err != nil {
			errs[i] = err
			continue
		}
		advs, idx = append(advs, adv), append(idx, i)
	}
	if len(advs) == 0 {
		return errs
	}
	sort.Stable(byThread(advs))
	if err := a.repo.AdvanceAll(ctx, coalesce(advs), updated); err != nil {
		for _, i := range idx {
			errs[i] = err
		}
	}
	return errs
}

// DefaultReadWindow is how long the read consumer lets receipts gather
// for its next transaction (ReadConsumer).
const DefaultReadWindow = 20 * time.Millisecond

// ReadConsumer is HandleConversationReads paced for the consumer's batches
// (natsx.ConsumeBatch, at most max receipts each): after a batch that was
// not full it returns only once window has passed since the batch started,
// so that the receipts arriving meanwhile queue up and share the next
// batch's transaction, and a thread's receipts among them coalesce into
// one advance. A receipt after a quiet spell is handled at once; each batch
// is committed, and its events handed to the relay, before the wait, so the
// wait delays the next batch, never this one's receipts (its acks go out
// after the wait: a crash in between redelivers receipts that change
// nothing). Under load the markRead callers never wait for it (they are
// answered by conversation's commit); it costs a receipt at most window on
// its way to the sender's stream, and saves a commit and a statement per
// receipt of the batch. The consumer calls it from one goroutine.
func (a *App) ReadConsumer(window time.Duration, max int) func(ctx context.Context, msgs []jetstream.Msg) []error {
	return paced(a.HandleConversationReads, window, max, waitFor)
}

// paced is h followed, after a batch of fewer than max messages, by wait
// for what is left of window since the batch started.
func paced(h func(context.Context, []jetstream.Msg) []error, window time.Duration, max int,
	wait func(context.Context, time.Duration)) func(context.Context, []jetstream.Msg) []error {
	return func(ctx context.Context, msgs []jetstream.Msg) []error {
		start := time.Now()
		errs := h(ctx, msgs)
		if len(msgs) < max {
			if d := window - time.Since(start); d > 0 {
				wait(ctx, d)
			}
		}
		return errs
	}
}

// waitFor waits d or until ctx ends.
func waitFor(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// coalesce merges each run of sorted receipts of one thread, side and
// reader into one advance to the highest watermark of the run, at the run's
// latest time (all of a batch's are read within microseconds): one advance
// turns the same messages READ as the run did, with one event each, in a
// third of the statements per receipt. It reuses as.
func coalesce(as []domain.Advance) []domain.Advance {
	out := as[:0]
	for _, adv := range as {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.Practice == adv.Practice && last.ConversationID == adv.ConversationID &&
				last.ReaderIsPatient == adv.ReaderIsPatient && last.Reader == adv.Reader && last.To == adv.To {
				last.UpTo = max(last.UpTo, adv.UpTo)
				if adv.At.After(last.At) {
					last.At = adv.At
				}
				continue
			}
		}
		out = append(out, adv)
	}
	return out
}

type byThread []domain.Advance

func (b byThread) Len() int      { return len(b) }
func (b byThread) Swap(i, j int) { b[i], b[j] = b[j], b[i] }
func (b byThread) Less(i, j int) bool {
	if b[i].Practice != b[j].Practice {
		return b[i].Practice < b[j].Practice
	}
	if b[i].ConversationID != b[j].ConversationID {
		return b[i].ConversationID < b[j].ConversationID
	}
	return !b[i].ReaderIsPatient && b[j].ReaderIsPatient
}

// readOf decodes a conversation.read event into its receipt.
func (a *App) readOf(m jetstream.Msg) (domain.Advance, error) {
	var e conversationv1.ConversationRead
	if err := proto.Unmarshal(m.Data(), &e); err != nil {
		return domain.Advance{}, fmt.Errorf("%w: %v", natsx.ErrPoison, err)
	}
	p, ok := ids.Parse(e.GetConversation(), "conversations")
	if !ok || e.GetMeta().GetPractice() == "" {
		return domain.Advance{}, fmt.Errorf("%w: conversation name", natsx.ErrPoison)
	}
	return a.readAdvance(e.GetMeta().GetPractice(), p[0], e.GetReader(), e.GetReaderRole(), e.GetUpToSeq()), nil
}
