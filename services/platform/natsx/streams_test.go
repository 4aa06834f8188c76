package natsx

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestToken(t *testing.T) {
	for in, want := range map[string]string{
		"":               "_",
		"_":              "%5F",
		"demo":           "demo",
		"patients/p-1_x": "patients/p-1_x",
		"a.b":            "a%2Eb",
		"*>":             "%2A%3E",
		"50%":            "50%25",
		"a b\tc\n":       "a%20b%09c%0A",
		"é":              "%C3%A9",
	} {
		require.Equal(t, want, Token(in), "Token(%q)", in)
		back, err := Untoken(want)
		require.NoError(t, err)
		require.Equal(t, in, back)
	}
	for _, bad := range []string{"%", "%4", "%zz", "a%G0"} {
		_, err := Untoken(bad)
		require.Error(t, err, bad)
	}
}

func FuzzToken(f *testing.F) {
	for _, s := range []string{"", "_", "demo", "a.b*c>d", "%41", "patients/x y", "\x00\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		tok := Token(id)
		require.NotEmpty(t, tok)
		require.False(t, strings.ContainsAny(tok, ".*> \t\r\n"), tok)
		for i := 0; i < len(tok); i++ {
			require.True(t, tok[i] > ' ' && tok[i] < 0x7f, tok)
		}
		back, err := Untoken(tok)
		require.NoError(t, err)
		require.Equal(t, id, back)
	})
}

func TestSubjects(t *testing.T) {
	s := Tenant(SubjectMessageCreated, "demo", "patients/a.b")
	require.Equal(t, "clinicchat.delivery.message.created.demo.patients/a%2Eb", s)
	require.Equal(t, SubjectMessageCreated, Base(s))
	t0, t1, n := TenantTokens(s)
	require.Equal(t, []string{"demo", "patients/a%2Eb"}, []string{t0, t1})
	require.Equal(t, 2, n)
	require.Equal(t, SubjectMessageCreated, Base(SubjectMessageCreated), "the pre-tenant form")
	_, _, n = TenantTokens(SubjectMessageCreated)
	require.Zero(t, n)
	require.Empty(t, Base("other.delivery.message.created"))
	require.Empty(t, Base("clinicchat.delivery.message"))
	require.Equal(t, []string{SubjectMessageCreated, SubjectMessageCreated + ".>"}, Filter(SubjectMessageCreated))
	require.Equal(t, "delivery", StreamDomain(StreamDelivery))
	require.Equal(t, "delivery.message.created", Kind(s))
	require.Equal(t, "delivery.message.created", Kind(SubjectMessageCreated))
}

func TestSetPrefix(t *testing.T) {
	t.Cleanup(func() { require.NoError(t, SetPrefix(DefaultPrefix)) })
	require.Error(t, SetPrefix("Bad.Prefix"))
	require.Error(t, SetPrefix("a.b"))
	require.NoError(t, SetPrefix("acme-2"))
	require.Equal(t, "acme-2.delivery.message.created", SubjectMessageCreated)
	require.Equal(t, "ACME_2_DELIVERY", StreamDelivery)
	require.Equal(t, "delivery", StreamDomain(StreamDelivery))
	require.Equal(t, []string{"acme-2.delivery.>"}, Streams(StreamsConfig{})[1].Subjects)
	require.Equal(t, SubjectMessageCreated, Base(Tenant(SubjectMessageCreated, "p")))
	require.Equal(t, "delivery.message.created", Kind(Tenant(SubjectMessageCreated, "p")))
	require.Empty(t, Kind("clinicchat.delivery.message.created"), "another deployment's subject")
}

func TestStreamsDuplicateWindow(t *testing.T) {
	for _, sc := range Streams(StreamsConfig{}) {
		require.Equal(t, DefaultDuplicateWindow, sc.Duplicates, sc.Name)
	}
	for _, sc := range Streams(StreamsConfig{DuplicateWindow: 30 * time.Second}) {
		require.Equal(t, 30*time.Second, sc.Duplicates, sc.Name)
	}
}

func TestStreamOf(t *testing.T) {
	for subject, want := range map[string]string{
		Tenant(SubjectMessageCreated, "p", "patients/x"): StreamDelivery,
		SubjectConversationRead:                          StreamConversation,
		Tenant(SubjectGatewayAccess, "p"):                StreamGateway,
		"clinicchat.unknown.x.y":                         "",
		"clinicchat.delivery":                            "",
		"other.delivery.message.created":                 "",
	} {
		require.Equal(t, want, StreamOf(subject), subject)
	}
	// Every stream holds what StreamOf says it does.
	for _, sc := range Streams(StreamsConfig{}) {
		require.Equal(t, sc.Name, StreamOf(strings.TrimSuffix(sc.Subjects[0], ">")+"kind.verb.p"))
	}
}

// Kinds lists each subject once, and each subject's kind is its Kind and
// belongs to a declared stream.
func TestKinds(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range Kinds() {
		require.False(t, seen[k], k)
		seen[k] = true
		subject := prefix + "." + k
		require.Equal(t, k, Kind(subject))
		require.NotEmpty(t, StreamOf(subject), k)
	}
	require.True(t, seen[Kind(SubjectNotification)])
	require.True(t, seen[Kind(SubjectGatewayAccess)])
	require.Len(t, kinds, len(seen))
}

// An echo kind carries only its one system action: a person's event of the
// echoed kind, or one handed to PublishBase with the echo kind itself, is
// published on the echoed (audited) kind.
func TestPublishBaseKeepsPersonsOffEchoKinds(t *testing.T) {
	require.Len(t, Echoes(), 2)
	for _, e := range Echoes() {
		echo, of := prefix+"."+e.Kind, prefix+"."+e.Of
		require.Contains(t, Kinds(), e.Kind)
		require.Contains(t, Kinds(), e.Of)
		require.Equal(t, StreamOf(of), StreamOf(echo), "an echo is in the stream of what it echoes")
		for _, base := range []string{of, echo} {
			require.Equal(t, echo, PublishBase(base, SystemActor, e.Action), e.Kind)
			require.Equal(t, of, PublishBase(base, "users/u1", e.Action), "a person's action is audited: %s", e.Kind)
			require.Equal(t, of, PublishBase(base, "patients/p1", e.Action), e.Kind)
			require.Equal(t, of, PublishBase(base, SystemActor, "conversation.archive"), "another system action: %s", e.Kind)
			require.Equal(t, of, PublishBase(base, "", ""), e.Kind)
		}
	}
	require.Equal(t, SubjectMessageStatusEcho, PublishBase(SubjectMessageUpdated, SystemActor, "message.status"))
	require.Equal(t, SubjectConversationEcho, PublishBase(SubjectConversationUpdated, SystemActor, "conversation.activity"))
	require.Equal(t, SubjectMessageCreated, PublishBase(SubjectMessageCreated, SystemActor, "message.status"))
	require.Equal(t, SubjectNotification, PublishBase(SubjectNotification, SystemActor, "conversation.activity"))
}

// TenantTokens reads the first two tenant tokens, however many follow, and
// none of the pre-tenant form or another subject, without allocating.
func TestTenantTokens(t *testing.T) {
	for _, c := range []struct {
		subject string
		t0, t1  string
		n       int
	}{
		{Tenant(SubjectMessageCreated, "p1", "patients/pa"), "p1", "patients/pa", 2},
		{Tenant(SubjectMessageCreated, "p1"), "p1", "", 1},
		{Tenant(SubjectConversationRead, "p.1", "users/u", "x"), "p%2E1", "users/u", 2},
		{SubjectMessageCreated, "", "", 0},
		{"other.subject", "", "", 0},
	} {
		t0, t1, n := TenantTokens(c.subject)
		require.Equal(t, []any{c.t0, c.t1, c.n}, []any{t0, t1, n}, c.subject)
	}
	s := Tenant(SubjectMessageCreated, "p1", "patients/pa")
	require.Zero(t, testing.AllocsPerRun(100, func() { _, _, _ = TenantTokens(s) }))
}
