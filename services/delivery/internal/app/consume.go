package app

import (
	"context"
	"fmt"
	"sort"

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
