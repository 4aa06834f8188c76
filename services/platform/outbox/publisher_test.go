package outbox

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// waitAck waits for the current round's reply i.
func waitAck(t *testing.T, p *publisher, i int) *nats.Msg {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if m := p.ack(i); m != nil {
			return m
		}
		select {
		case <-p.notify:
		case <-deadline:
			t.Fatalf("no reply %d", i)
		}
	}
}

// The publisher's replies, read by hand, say what the server said: the
// stream and sequence of a stored event, a duplicate by Nats-Msg-Id, a
// refused Nats-Expected-Last-Sequence as the API error the relay tells
// apart, no stream for the subject; the headers of one row do not leak
// into the next (the message is reused); a reply of an earlier round is
// not taken for the current one's.
func TestPublisherReadsWhatTheServerAcknowledged(t *testing.T) {
	_, _, js := testkit.NATS(t)
	p := newPublisher(js)
	t.Cleanup(p.close)
	subject := natsx.Tenant(natsx.SubjectDeliveryAccess, "p", "c")

	round, err := p.begin(3)
	require.NoError(t, err)
	require.NoError(t, p.send(round, 0, subject, []byte("a"), "id-a", true, 0, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", batchPos{}))
	require.NoError(t, p.send(round, 1, subject, []byte("a again"), "id-a", false, 0, "", batchPos{}))
	require.NoError(t, p.send(round, 2, subject, []byte("b"), "id-b", true, 7, "", batchPos{}))
	a, err := parseAck(waitAck(t, p, 0))
	require.NoError(t, err)
	require.Equal(t, natsx.StreamDelivery, string(a.stream))
	require.Equal(t, uint64(1), a.seq)
	require.False(t, a.duplicate)
	a, err = parseAck(waitAck(t, p, 1))
	require.NoError(t, err)
	require.True(t, a.duplicate, "the same Nats-Msg-Id again")
	require.Equal(t, uint64(1), a.seq)
	_, err = parseAck(waitAck(t, p, 2))
	var apiErr *jetstream.APIError
	require.True(t, errors.As(err, &apiErr), "%v", err)
	require.Equal(t, wrongLastSequence, apiErr.ErrorCode)

	// Nothing of the first row's headers is left on the second: one event
	// stored, with its id, its traceparent; none on a row without.
	s, err := js.Stream(context.Background(), natsx.StreamDelivery)
	require.NoError(t, err)
	require.Equal(t, uint64(1), s.CachedInfo().State.Msgs)
	m, err := s.GetMsg(context.Background(), 1)
	require.NoError(t, err)
	require.Equal(t, "id-a", m.Header.Get(jetstream.MsgIDHeader))
	require.NotEmpty(t, m.Header.Get("traceparent"))

	// A new round: a late reply of the old one (same index) is not its.
	old := round
	round, err = p.begin(2)
	require.NoError(t, err)
	require.NoError(t, p.send(old, 0, subject, []byte("late"), "id-late", false, 0, "", batchPos{}))
	require.NoError(t, p.send(round, 1, subject, []byte("c"), "id-c", false, 0, "", batchPos{}))
	a, err = parseAck(waitAck(t, p, 1))
	require.NoError(t, err)
	require.Equal(t, uint64(3), a.seq, "id-late stored as 2, then id-c")
	require.Nil(t, p.ack(0), "the old round's reply 0 was dropped")
	m, err = s.GetMsg(context.Background(), 3)
	require.NoError(t, err)
	require.Empty(t, m.Header.Get("traceparent"))
	require.Empty(t, m.Header.Get(jetstream.ExpectedLastSeqHeader))

	// No stream holds the subject.
	round, err = p.begin(1)
	require.NoError(t, err)
	require.NoError(t, p.send(round, 0, "nostream.x", []byte("x"), "id-x", false, 0, "", batchPos{}))
	_, err = parseAck(waitAck(t, p, 0))
	require.ErrorIs(t, err, errNoStream)
}

// fastAck reads exactly the server's success forms; anything else goes to
// encoding/json, which agrees with it on those.
func TestFastAckReadsOnlyTheServersSuccessForms(t *testing.T) {
	for _, tc := range []struct {
		in        string
		ok        bool
		stream    string
		seq       uint64
		duplicate bool
		count     uint64 // a fast batch's PubAck (batch set)
	}{
		{`{"stream":"S","seq":12}`, true, "S", 12, false, 0},
		{`{"stream":"S","domain":"hub","seq":3}`, true, "S", 3, false, 0},
		{`{"stream":"S","seq":18446744073709551615,"duplicate": true}`, false, "S", 18446744073709551615, true, 0}, // 20 digits: json's
		{`{"stream":"S","seq":1844674407370955161,"duplicate": true}`, true, "S", 1844674407370955161, true, 0},
		{`{"stream":"S","seq":5,"duplicate":true}`, true, "S", 5, true, 0},
		{`{"stream":"S","seq":5,"batch":"b","count":2}`, true, "S", 5, false, 2},
		{`{"stream":"S","domain":"hub","seq":0,"batch":"tag-1-0","count":3}`, true, "S", 0, false, 3},
		{`{"stream":"S","seq":7,"duplicate": true,"batch":"b","count":1}`, true, "S", 7, true, 1},
		{`{"stream":"S","seq":5,"batch":"b"}`, false, "S", 5, false, 0},
		{`{"stream":"S","seq":5,"batch":"b\"c","count":2}`, false, "S", 5, false, 2},
		{`{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 4"},"stream":"S","seq":0}`, false, "", 0, false, 0},
		{`{"stream":"S\"x","seq":1}`, false, `S"x`, 1, false, 0},
		{`{"stream":"S","seq":}`, false, "", 0, false, 0},
	} {
		a, ok := fastAck([]byte(tc.in))
		require.Equal(t, tc.ok, ok, tc.in)
		if ok {
			require.Equal(t, tc.stream, string(a.stream), tc.in)
			require.Equal(t, tc.seq, a.seq, tc.in)
			require.Equal(t, tc.duplicate, a.duplicate, tc.in)
			require.Equal(t, tc.count, a.count, tc.in)
			require.Equal(t, tc.count > 0, a.batch, tc.in)
		}
		b, err := parseAck(&nats.Msg{Data: []byte(tc.in)})
		if tc.stream == "" {
			require.Error(t, err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.stream, string(b.stream), tc.in)
		require.Equal(t, tc.seq, b.seq, tc.in)
		require.Equal(t, tc.duplicate, b.duplicate, tc.in)
		require.Equal(t, tc.count, b.count, tc.in)
	}
}
