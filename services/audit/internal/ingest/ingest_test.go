package ingest_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
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
// action, in the tenant and the pre-tenant form, and none of the skipped
// kinds (non-actions, the product's echoes).
func TestSpecsCoverEveryStream(t *testing.T) {
	t.Parallel()
	specs := ingest.Specs()
	streams := natsx.Streams(natsx.StreamsConfig{})
	require.Len(t, specs, len(streams))
	durables := map[string]bool{}
	for i, s := range specs {
		require.Equal(t, streams[i].Name, s.Stream)
		require.False(t, durables[s.Durable])
		durables[s.Durable] = true
	}
	require.True(t, durables["audit-conversation"])
	require.True(t, durables["audit-gateway"])
	// A stream without skipped kinds is consumed whole: a subject added
	// later is audited.
	require.Equal(t, []string{natsx.Prefix() + ".gateway.>"}, specByStream()[natsx.StreamGateway].FilterSubjects)
}

func specByStream() map[string]natsx.ConsumerSpec {
	out := map[string]natsx.ConsumerSpec{}
	for _, s := range ingest.Specs() {
		out[s.Stream] = s
	}
	return out
}

// Audited by default: every kind of event (natsx.Kinds, which every
// publisher's subject is: TestPublishedSubjectsAreDeclaredKinds) is either
// in its stream's audit consumer's filter, in every form it is published
// in, or declared skipped by the policy (a non-action, or an echo kind that
// natsx.PublishBase keeps to its one system action). A kind added without
// either is delivered (its stream's filter lists kinds: this fails until it
// is classified).
func TestEveryKindIsAuditedOrSkipped(t *testing.T) {
	t.Parallel()
	byStream := specByStream()
	skipped := 0
	for _, k := range natsx.Kinds() {
		base := natsx.Prefix() + "." + k
		spec := byStream[natsx.StreamOf(base)]
		for _, subject := range []string{base, natsx.Tenant(base, "demo"), natsx.Tenant(base, "demo", "patients/p1")} {
			require.Equal(t, !domain.Skipped(k), delivered(spec, subject), subject)
		}
		if domain.Skipped(k) {
			skipped++
		}
	}
	require.Equal(t, len(domain.NonActionSubjects)+len(domain.SystemEchoSubjects), skipped,
		"every skipped kind is a kind of natsx, and declared once")

	// The policy's echo kinds are natsx's, with the same action, and that
	// action is one the policy skips only for the system actor.
	echoes := map[string]string{}
	for _, e := range natsx.Echoes() {
		echoes[e.Kind] = e.Action
		require.Contains(t, domain.SystemEchoActions, e.Action)
		require.False(t, domain.Skipped(e.Of), "the echoed kind %s is audited", e.Of)
		// A person's action on either kind is published on the audited one.
		of := natsx.Prefix() + "." + e.Of
		for _, base := range []string{of, natsx.Prefix() + "." + e.Kind} {
			require.Equal(t, of, natsx.PublishBase(base, "users/u1", e.Action))
			require.True(t, delivered(byStream[natsx.StreamOf(of)], natsx.Tenant(natsx.PublishBase(base, "patients/p1", e.Action), "demo")))
		}
	}
	require.Equal(t, domain.SystemEchoSubjects, echoes)
}

// Every subject a service publishes on is one of natsx's kinds: publishers
// name them with natsx.Subject* (declared in natsx's kinds table, checked
// here from the source) and no code outside natsx and the policy spells a
// kind itself.
func TestPublishedSubjectsAreDeclaredKinds(t *testing.T) {
	t.Parallel()
	root := filepath.Join("..", "..", "..", "..")
	table, err := os.ReadFile(filepath.Join(root, "services", "platform", "natsx", "streams.go"))
	require.NoError(t, err)
	declared := map[string]bool{}
	for _, m := range regexp.MustCompile(`\{&(Subject\w+), "([a-z.]+)"\}`).FindAllStringSubmatch(string(table), -1) {
		declared[m[1]] = true
		require.Contains(t, natsx.Kinds(), m[2])
	}
	require.Len(t, declared, len(natsx.Kinds()))
	// The echo kinds' variables: no publisher names them (natsx.PublishBase
	// alone puts an event there, for the system actor's one action); only
	// the gateway, which reads them, does.
	echoVars := map[string]bool{}
	for _, m := range regexp.MustCompile(`\{&(Subject\w+), &Subject\w+, "`).FindAllStringSubmatch(string(table), -1) {
		echoVars[m[1]] = true
	}
	require.Len(t, echoVars, len(natsx.Echoes()))
	use := regexp.MustCompile(`natsx\.(Subject\w+)`)
	literal := regexp.MustCompile(`"(?:[a-z][a-z0-9_-]*\.)?(?:conversation|delivery|attachment|preferences|gateway)\.[a-z_]+\.[a-z_]+[".]`)
	files := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || strings.HasSuffix(path, ".pb.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		slash := filepath.ToSlash(path)
		for _, m := range use.FindAllStringSubmatch(string(src), -1) {
			require.True(t, declared[m[1]], "%s: natsx.%s is not in natsx's kinds table", path, m[1])
			require.False(t, echoVars[m[1]] && !strings.HasPrefix(slash, filepath.ToSlash(root)+"/gateway/"),
				"%s names natsx.%s: publish on the echoed kind, natsx.PublishBase picks the echo", path, m[1])
		}
		if strings.HasSuffix(slash, "services/platform/natsx/streams.go") || strings.HasSuffix(slash, "services/audit/internal/domain/policy.go") {
			return nil
		}
		for _, m := range literal.FindAllString(string(src), -1) {
			kind := strings.TrimPrefix(strings.Trim(m, `".`), natsx.Prefix()+".")
			require.Contains(t, natsx.Kinds(), kind, "%s spells a subject that is not a kind of natsx", path)
		}
		return nil
	})
	require.NoError(t, err)
	require.Greater(t, files, 100, "the walk reached the repository")
}
