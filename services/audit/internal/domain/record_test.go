package domain_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinicchat/clinicchat/services/audit/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

func record() domain.Record {
	return domain.Record{Index: 3, Entry: domain.Entry{
		EventID: "e1", Time: time.Date(2026, 1, 1, 0, 0, 0, 123456000, time.UTC), Practice: "demo",
		Actor: "users/u", ActorRole: "dentist", Action: "message.send", Resource: "conversations/c/messages/m",
		Outcome: domain.OutcomeAllowed,
	}}
}

func TestLeafEncoding(t *testing.T) {
	t.Parallel()
	want := "clinicchat audit record v1\n" +
		"index 3\n" +
		"time 1767225600123456\n" +
		"practice 4:demo\n" +
		"actor 7:users/u\n" +
		"actor_role 7:dentist\n" +
		"action 12:message.send\n" +
		"resource 26:conversations/c/messages/m\n" +
		"outcome 7:ALLOWED\n" +
		"detail 0:\n" +
		"event_id 2:e1\n"
	require.Equal(t, want, string(record().Leaf()))
}

func TestLeafHashCoversEveryField(t *testing.T) {
	t.Parallel()
	base := record().LeafHash()
	changes := map[string]func(*domain.Record){
		"index":      func(r *domain.Record) { r.Index++ },
		"time":       func(r *domain.Record) { r.Time = r.Time.Add(time.Microsecond) },
		"practice":   func(r *domain.Record) { r.Practice = "demo2" },
		"actor":      func(r *domain.Record) { r.Actor = "users/v" },
		"actor_role": func(r *domain.Record) { r.ActorRole = "assistant" },
		"action":     func(r *domain.Record) { r.Action = "message.view" },
		"resource":   func(r *domain.Record) { r.Resource = "conversations/c" },
		"outcome":    func(r *domain.Record) { r.Outcome = domain.OutcomeDenied },
		"detail":     func(r *domain.Record) { r.Detail = "x" },
		"event_id":   func(r *domain.Record) { r.EventID = "e2" },
		// Moving bytes between fields changes the hash too (length prefixes).
		"shift": func(r *domain.Record) { r.Actor, r.ActorRole = "users/ud", "entist" },
	}
	for name, change := range changes {
		r := record()
		change(&r)
		require.NotEqual(t, base, r.LeafHash(), name)
	}
	r := record()
	r.Hash = r.LeafHash()
	require.True(t, r.Matches())
}

func TestNormalize(t *testing.T) {
	t.Parallel()
	e := domain.Entry{Time: time.Date(2026, 1, 1, 1, 0, 0, 123456789, time.FixedZone("x", 3600))}.Normalize()
	require.Equal(t, time.Date(2026, 1, 1, 0, 0, 0, 123456000, time.UTC), e.Time)
	require.Equal(t, domain.OutcomeAllowed, e.Outcome)
}

// The domain names event kinds itself (it links no NATS adapter); the
// notification kind must stay the one the conversation service publishes.
func TestNotificationKindMatchesNATS(t *testing.T) {
	t.Parallel()
	_, ok := domain.NonActionSubjects[natsx.Kind(natsx.SubjectNotification)]
	require.True(t, ok)
	require.Equal(t, "message.status", domain.SystemEchoSubjects[natsx.Kind(natsx.SubjectMessageStatusEcho)])
	require.Equal(t, "conversation.activity", domain.SystemEchoSubjects[natsx.Kind(natsx.SubjectConversationEcho)])
	require.Equal(t, natsx.SystemActor, domain.SystemActor)
}

func TestAudited(t *testing.T) {
	t.Parallel()
	person := domain.Entry{Actor: "users/u", Action: "message.status"}
	system := domain.Entry{Actor: domain.SystemActor, ActorRole: "system"}
	tests := []struct {
		name    string
		subject string
		e       domain.Entry
		want    bool
	}{
		{"send", natsx.SubjectMessageCreated, domain.Entry{Actor: "users/u", Action: "message.send"}, true},
		{"notification", natsx.SubjectNotification, domain.Entry{Actor: "users/u", Action: "message.send"}, false},
		{"system status echo", natsx.SubjectMessageUpdated, withAction(system, "message.status"), false},
		{"system activity echo", natsx.SubjectConversationUpdated, withAction(system, "conversation.activity"), false},
		{"person with an echo action", natsx.SubjectMessageUpdated, person, true},
		{"system status echo on its kind", natsx.SubjectMessageStatusEcho, withAction(system, "message.status"), false},
		{"system activity echo on its kind", natsx.SubjectConversationEcho, withAction(system, "conversation.activity"), false},
		// natsx.PublishBase never puts these on an echo kind; were one
		// delivered there, the policy would still log it.
		{"person on an echo kind", natsx.SubjectMessageStatusEcho, person, true},
		{"person on the activity echo kind", natsx.SubjectConversationEcho, domain.Entry{Actor: "patients/p", Action: "conversation.activity"}, true},
		{"system archive on an echo kind", natsx.SubjectConversationEcho, withAction(system, "conversation.archive"), true},
		{"system archive", natsx.SubjectConversationUpdated, withAction(system, "conversation.archive"), true},
		{"system anything else", natsx.SubjectGatewayAccess, withAction(system, "something.new"), true},
		{"practice system as users/x", natsx.SubjectPatientUpserted, domain.Entry{Actor: "users/pms", ActorRole: "system", Action: "message.status"}, true},
	}
	for _, tt := range tests {
		got, why := domain.Audited(natsx.Kind(tt.subject), tt.e)
		require.Equal(t, tt.want, got, tt.name)
		require.Equal(t, tt.want, why == "", tt.name)
	}
}

func withAction(e domain.Entry, action string) domain.Entry {
	e.Action = action
	return e
}

// memHashes is a complete in-memory tlog store, the reference for Frontier.
type memHashes []tlog.Hash

func (m memHashes) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		out[i] = m[x]
	}
	return out, nil
}

func TestFrontierMatchesFullTree(t *testing.T) {
	t.Parallel()
	var all memHashes
	f := domain.NewFrontier()
	for n := int64(0); n < 300; n++ {
		leaf := tlog.RecordHash([]byte{byte(n), byte(n >> 8)})
		want, err := tlog.StoredHashes(n, []byte{byte(n), byte(n >> 8)}, all)
		require.NoError(t, err)
		require.Equal(t, tlog.StoredHashCount(n), int64(len(all)))
		require.Equal(t, tlog.StoredHashIndex(0, n), int64(len(all)))
		all = append(all, want...)
		got, err := f.Add(leaf)
		require.NoError(t, err)
		require.Equal(t, want, got)
		root, err := f.Root()
		require.NoError(t, err)
		wantRoot, err := tlog.TreeHash(n+1, all)
		require.NoError(t, err)
		require.Equal(t, wantRoot, root)
	}
}

func TestCheckpointText(t *testing.T) {
	t.Parallel()
	root := tlog.RecordHash([]byte("x"))
	for _, practice := range []string{"demo", "a b/c\n%", "ünïcode"} {
		text := domain.CheckpointText(practice, 42, root)
		p, tree, err := domain.ParseCheckpointText(text)
		require.NoError(t, err)
		require.Equal(t, practice, p)
		require.Equal(t, tlog.Tree{N: 42, Hash: root}, tree)
	}
	require.Equal(t, "go.sum database tree\n7\n"+root.String()+"\npractice demo\n", domain.CheckpointText("demo", 7, root))
	_, _, err := domain.ParseCheckpointText("go.sum database tree\n7\n" + root.String() + "\n")
	require.Error(t, err)
}
