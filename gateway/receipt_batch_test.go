package gateway

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// statusEcho is a receipt echo as delivery publishes it: one message in
// message, several in messages.
func statusEcho(id string, msgs ...*deliveryv1.Message) *deliveryv1.MessageUpdated {
	e := &deliveryv1.MessageUpdated{Meta: &typev1.EventMeta{Id: id, Time: timestamppb.Now(), Practice: "p1",
		Actor: natsx.SystemActor, Action: "message.status", Outcome: typev1.EventMeta_ALLOWED}, Patient: "patients/pa"}
	if len(msgs) == 1 {
		e.Message = msgs[0]
	} else {
		e.Messages = msgs
	}
	return e
}

// readMessages are n messages of the doctor in conversations/ca, READ;
// the second is sensitive (locked for a patient without a recent sign-in).
func readMessages(prefix string, n int) []*deliveryv1.Message {
	out := make([]*deliveryv1.Message, n)
	for i := range out {
		m := messageCreated("p1", "ca", "pa", fmt.Sprint(prefix, i+1), "users/doc", "hello", int64(i+1), i == 1).GetMessage()
		if i == 1 {
			m.Text = "secret"
		}
		m.Status, m.ReadTime, m.ReadBy = deliveryv1.Message_READ, timestamppb.Now(), "patients/pa"
		out[i] = m
	}
	return out
}

// requireUpdated is the next event: message.updated of name with id.
func requireUpdated(t *testing.T, c *sseClient, id, name string) sseEvent {
	t.Helper()
	ev := c.next()
	require.Equal(t, EventMessageUpdated, ev.Event, ev.Data)
	require.Equal(t, name, ev.message(t)["name"], ev.Data)
	require.Equal(t, id, ev.ID, ev.Data)
	return ev
}

// A receipt echo carrying five messages (one stream message) is written as
// five message.updated, each rendered for the viewer exactly as the same
// message's echo of its own (the sensitive one locked for the patient who
// did not sign in recently), each with its own id; a resume after the
// third replays the fourth and fifth and what came later, on a gateway
// started after the events too; old per-message echoes still render.
func TestEventsReceiptEchoOfSeveralMessages(t *testing.T) {
	h := newHarness(t)
	staffTok := h.token("doc", auth.RoleDentist, "p1", 0)
	patTok := h.token("pa", auth.RolePatient, "p1", 10*time.Minute)
	staff, pat := h.openEvents(staffTok, ""), h.openEvents(patTok, "")

	old := readMessages("old", 1)[0]
	h.publish(natsx.SubjectMessageUpdated, statusEcho("e-old", old)) // seq 1: before the upgrade
	msgs := readMessages("m", 5)
	h.publish(natsx.SubjectMessageStatusEcho, statusEcho("e-batch", msgs...)) // seq 2
	for i, m := range msgs {                                                  // seqs 3-7: the same, one each
		h.publish(natsx.SubjectMessageStatusEcho, statusEcho(fmt.Sprint("e-", i), m))
	}
	h.waitHub(7)

	ids := []string{"d2.1.c0", "d2.2.c0", "d2.3.c0", "d2.4.c0", "d2.c0"}
	for _, c := range []*sseClient{staff, pat} {
		requireUpdated(t, c, "d1.c0", old.GetName())
		var batch []sseEvent
		for i, m := range msgs {
			batch = append(batch, requireUpdated(t, c, ids[i], m.GetName()))
		}
		for i, m := range msgs {
			single := requireUpdated(t, c, fmt.Sprintf("d%d.c0", i+3), m.GetName())
			require.Equal(t, single.Data, batch[i].Data, "rendered as the message's own echo")
		}
		second := batch[1].message(t)
		if c == pat {
			require.Equal(t, true, second["locked"])
			require.NotContains(t, batch[1].Data, "secret")
		} else {
			require.Equal(t, false, second["locked"])
			require.Equal(t, "secret", second["text"])
		}
		require.Equal(t, "READ", batch[4].message(t)["status"])
	}
	require.Equal(t, uint64(7), h.gw.hub.stats("p1").decoded, "one decode per stream message")

	// A gateway started after the events (a restart): resumed after the
	// third part, the fourth and fifth, then the rest.
	h2 := newHarnessOn(t, h)
	for _, tok := range []string{staffTok, patTok} {
		c := h2.openEvents(tok, ids[2])
		requireUpdated(t, c, ids[3], msgs[3].GetName())
		requireUpdated(t, c, ids[4], msgs[4].GetName())
		for i, m := range msgs {
			requireUpdated(t, c, fmt.Sprintf("d%d.c0", i+3), m.GetName())
		}
		c.close()
	}
	// After the fifth part: the message is done.
	c := h2.openEvents(staffTok, ids[4])
	requireUpdated(t, c, "d3.c0", msgs[0].GetName())
	c.close()
	// Resumed inside a message, then live parts of a new one.
	c = h2.openEvents(staffTok, ids[3])
	requireUpdated(t, c, ids[4], msgs[4].GetName())
	for i := range msgs {
		requireUpdated(t, c, fmt.Sprintf("d%d.c0", i+3), msgs[i].GetName())
	}
	more := readMessages("n", 2)
	h.publish(natsx.SubjectMessageStatusEcho, statusEcho("e-more", more...)) // seq 8
	requireUpdated(t, c, "d8.1.c0", more[0].GetName())
	requireUpdated(t, c, "d8.c0", more[1].GetName())
}

// The SSE ids: the form before parts existed still reads; a part's form
// round-trips; anything else is refused.
func TestCursorParts(t *testing.T) {
	for s, want := range map[string]cursor{
		"d0.c0": {}, "d12.c7": {d: 12, c: 7}, "d12.3.c7": {d: 12, dk: 3, c: 7}, "d1.64.c0": {d: 1, dk: 64},
	} {
		got, err := parseCursor(s)
		require.NoError(t, err, s)
		require.Equal(t, want, got, s)
		require.Equal(t, s, got.String())
	}
	for _, bad := range []string{"d12.0.c7", "d0.1.c7", "d12..c7", "d12.x.c7", "d12.3", "d12.3.4.c7", "d12.03.c7", "d12.-1.c7", "d12.3.c"} {
		_, err := parseCursor(bad)
		require.Error(t, err, bad)
	}
	// Order: a part is after the message before it and before the rest of
	// its own.
	cur := cursor{d: 5, dk: 2}
	for _, tc := range []struct {
		e       *event
		covered bool
	}{
		{&event{stream: streamD, seq: 4}, true},
		{&event{stream: streamD, seq: 5, part: 1}, true},
		{&event{stream: streamD, seq: 5, part: 2}, true},
		{&event{stream: streamD, seq: 5, part: 3}, false},
		{&event{stream: streamD, seq: 6}, false},
		{&event{stream: streamC, seq: 0}, true},
	} {
		require.Equal(t, tc.covered, cur.covers(tc.e), "seq %d part %d", tc.e.seq, tc.e.part)
	}
	require.Equal(t, cursor{d: 5, dk: 3}, cur.after(&event{stream: streamD, seq: 5, part: 3}))
	require.Equal(t, cursor{d: 5}, cur.after(&event{stream: streamD, seq: 5, part: 4, last: true}))
	require.Equal(t, uint64(4), cur.at(streamD))
}

// An echo the hub does not read from its bytes (here: message and messages
// both set) is unmarshalled whole, message first, one part each.
func TestDecodeEventPartsUnmarshalled(t *testing.T) {
	msgs := readMessages("m", 3)
	e := statusEcho("e", msgs[1:]...)
	e.Message = msgs[0]
	data, err := proto.Marshal(e)
	require.NoError(t, err)
	first := decodeEvent(zap.NewNop(), streamD, 9, natsx.Tenant(natsx.SubjectMessageStatusEcho, "p1", "patients/pa"), data, "p1")
	require.NotNil(t, first)
	var got []string
	for x := first; x != nil; x = x.more {
		require.Equal(t, uint32(len(got)+1), x.part)
		require.Equal(t, x.more == nil, x.last)
		require.Equal(t, itemMessageUpdated, x.kind)
		require.Equal(t, uint64(9), x.seq)
		require.Equal(t, "p1", x.practice)
		require.Equal(t, "patients/pa", x.patient)
		got = append(got, x.message.GetName())
	}
	require.Equal(t, []string{msgs[0].GetName(), msgs[1].GetName(), msgs[2].GetName()}, got)

	// The batched form from the wire: the same parts.
	data, err = proto.Marshal(statusEcho("e", msgs...))
	require.NoError(t, err)
	first = decodeEvent(zap.NewNop(), streamD, 9, natsx.Tenant(natsx.SubjectMessageStatusEcho, "p1", "patients/pa"), data, "p1")
	got = nil
	for x := first; x != nil; x = x.more {
		require.NotNil(t, x.raw, "read from its bytes")
		require.Equal(t, x.more == nil, x.last)
		got = append(got, x.message.GetName())
	}
	require.Equal(t, []string{msgs[0].GetName(), msgs[1].GetName(), msgs[2].GetName()}, got)
}
