package ingest_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
	"github.com/clinicchat/clinicchat/services/audit/internal/ingest"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

func marshal(t *testing.T, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	require.NoError(t, err)
	return b
}

func TestDecode(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 2, 3, 4, 5, 6, 789123456, time.UTC)
	fallback := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	meta := &typev1.EventMeta{Id: "evt1", Time: timestamppb.New(at), Practice: "demo", Actor: "users/u", ActorRole: "dentist",
		Action: "message.send", Resource: "conversations/c/messages/1", Detail: "d"}
	msg := &deliveryv1.MessageCreated{Meta: meta, Message: &deliveryv1.Message{Name: "conversations/c/messages/1", Text: "CANARY-decode"}, Patient: "patients/p"}

	e, err := ingest.Decode(marshal(t, msg), fallback)
	require.NoError(t, err)
	require.Equal(t, domain.Entry{EventID: "evt1", Time: time.Date(2026, 2, 3, 4, 5, 6, 789123000, time.UTC), Practice: "demo",
		Actor: "users/u", ActorRole: "dentist", Action: "message.send", Resource: "conversations/c/messages/1",
		Outcome: domain.OutcomeAllowed, Detail: "d"}, e)

	denied := proto.Clone(meta).(*typev1.EventMeta)
	denied.Outcome, denied.Time = typev1.EventMeta_DENIED, nil
	e, err = ingest.Decode(marshal(t, &typev1.AccessRecorded{Meta: denied}), fallback)
	require.NoError(t, err)
	require.Equal(t, domain.OutcomeDenied, e.Outcome)
	require.Equal(t, fallback, e.Time, "no meta time: the publish time")

	for name, tc := range map[string]struct {
		payload []byte
		err     error
	}{
		"garbage":     {[]byte{0xff, 0xff, 0xff}, ingest.ErrUndecodable},
		"empty":       {nil, ingest.ErrNoMeta},
		"no meta":     {marshal(t, &deliveryv1.MessageCreated{Patient: "patients/p"}), ingest.ErrNoMeta},
		"no id":       {marshal(t, &typev1.AccessRecorded{Meta: &typev1.EventMeta{Practice: "p", Action: "a"}}), ingest.ErrBadMeta},
		"bad id":      {marshal(t, &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: "a/b", Practice: "p", Action: "a"}}), ingest.ErrBadMeta},
		"no practice": {marshal(t, &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: "x", Action: "a"}}), ingest.ErrBadMeta},
		"no action":   {marshal(t, &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: "x", Practice: "p"}}), ingest.ErrBadMeta},
	} {
		_, err := ingest.Decode(tc.payload, fallback)
		require.ErrorIs(t, err, tc.err, name)
	}
}

// matches reports whether NATS delivers subject to a filter (tokens, "*"
// for one token, a final ">" for one or more).
func matches(filter, subject string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, tok := range f {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(f) == len(s)
}

func delivered(spec natsx.ConsumerSpec, subject string) bool {
	for _, f := range spec.FilterSubjects {
		if matches(f, subject) {
			return true
		}
	}
	return false
}

// Every stream has its consumer; it receives every event kind that can be an
// action, in the tenant and the pre-tenant form, and none of the
// non-actions.
func TestSpecsCoverEveryStream(t *testing.T) {
	t.Parallel()
	specs := ingest.Specs()
	streams := natsx.Streams(natsx.StreamsConfig{})
	require.Len(t, specs, len(streams))
	durables := map[string]bool{}
	byStream := map[string]natsx.ConsumerSpec{}
	for i, s := range specs {
		require.Equal(t, streams[i].Name, s.Stream)
		require.False(t, durables[s.Durable])
		durables[s.Durable] = true
		byStream[s.Stream] = s
	}
	require.True(t, durables["audit-conversation"])
	require.True(t, durables["audit-gateway"])
	skipped := 0
	for _, k := range natsx.Kinds() {
		base := natsx.Prefix() + "." + k
		spec := byStream[natsx.StreamOf(base)]
		_, nonAction := domain.NonActionSubjects[k]
		for _, subject := range []string{base, natsx.Tenant(base, "demo"), natsx.Tenant(base, "demo", "patients/p1")} {
			require.Equal(t, !nonAction, delivered(spec, subject), subject)
		}
		if nonAction {
			skipped++
		}
	}
	require.Equal(t, len(domain.NonActionSubjects), skipped, "every non-action subject is a kind of natsx")
	// A stream without non-actions is consumed whole: a subject added later
	// is audited.
	require.Equal(t, []string{natsx.Prefix() + ".gateway.>"}, byStream[natsx.StreamGateway].FilterSubjects)
}
