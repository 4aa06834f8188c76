package app_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/app"
	"github.com/clinicchat/clinicchat/services/delivery/internal/domain"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// readMsg is a conversation.read event as the consumer receives it (only
// its payload is read).
type readMsg struct {
	jetstream.Msg
	data []byte
}

func (m readMsg) Data() []byte { return m.data }

func readEvent(t *testing.T, reader, role string, upTo int64) jetstream.Msg {
	raw, err := proto.Marshal(&conversationv1.ConversationRead{Meta: &typev1.EventMeta{Practice: "p1"},
		Conversation: "conversations/c1", Reader: reader, ReaderRole: role, UpToSeq: upTo})
	require.NoError(t, err)
	return readMsg{data: raw}
}

// A batch of receipts, several of one reader of a thread among them (stale
// ones too), turns each message READ once, by its reader, with exactly one
// message.updated per advance, carrying each message it changed once; an
// undecodable receipt fails alone.
func TestHandleConversationReadsBatch(t *testing.T) {
	ctx := context.Background()
	db := testkit.OpenDB(t, testkit.Backends()[0])
	repo, err := store.New(ctx, db)
	require.NoError(t, err)
	a := app.New(repo, fakeConversations{"c1": {ID: "c1", PatientID: "pat"}},
		fakePatients{"pat": {HasPortalAccount: true, ChatOptIn: true}}, nil, fakeArtifacts{}, testkit.Logger(t))
	staff := auth.WithIdentity(ctx, auth.Identity{Subject: "u1", Role: "dentist", Practice: "p1"})
	patient := auth.WithIdentity(ctx, auth.Identity{Subject: "pat", Role: "patient", Practice: "p1"})
	for i := range 5 { // seq 1-5 from staff, 6 from the patient
		_, err := a.Send(staff, app.SendRequest{Parent: "conversations/c1", Text: "m", RequestID: string(rune('a' + i))})
		require.NoError(t, err)
	}
	_, err = a.Send(patient, app.SendRequest{Parent: "conversations/c1", Text: "p", RequestID: "p"})
	require.NoError(t, err)

	batch := []jetstream.Msg{
		readEvent(t, "patients/pat", "patient", 2),
		readEvent(t, "patients/pat", "patient", 1), // stale
		readEvent(t, "users/u1", "dentist", 6),
		readMsg{data: []byte{0xff}}, // undecodable
		readEvent(t, "patients/pat", "patient", 4),
		readEvent(t, "patients/pat", "patient", 6), // capped: 6 is the patient's own
	}
	errs := a.HandleConversationReads(ctx, batch)
	for i, err := range errs {
		if i == 3 {
			require.Error(t, err, "poison")
			continue
		}
		require.NoError(t, err, "receipt %d", i)
	}
	list, err := repo.List(ctx, "p1", "c1", 0, 10)
	require.NoError(t, err)
	require.Len(t, list, 6)
	for _, m := range list {
		require.Equal(t, domain.Read, m.Status, "message %d", m.Seq)
		want := "patients/pat"
		if m.Seq == 6 {
			want = "users/u1"
		}
		require.Equal(t, want, m.ReadBy, "message %d", m.Seq)
	}
	// The receipts are the product's echoes: on their own kind, none on
	// the audited message.updated.
	var updates, audited int
	require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM outbox WHERE subject LIKE '`+natsx.SubjectMessageStatusEcho+`.%'`).Scan(&updates))
	require.Equal(t, 2, updates, "one message.updated per advance: the patient's (1-5) and the dentist's (6)")
	require.Equal(t, []int32{6, 1, 2, 3, 4, 5}, statusSeqs(t, db, 0), "each message once (the staff side's advance first)")
	require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM outbox WHERE subject LIKE '`+natsx.SubjectMessageUpdated+`.%'`).Scan(&audited))
	require.Zero(t, audited)

	// The same batch again (redelivered) changes nothing and tells nothing.
	for _, err := range a.HandleConversationReads(ctx, batch) {
		_ = err
	}
	require.NoError(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM outbox WHERE subject LIKE '`+natsx.SubjectMessageStatusEcho+`.%'`).Scan(&updates))
	require.Equal(t, 2, updates, "a replay tells nothing")
}

// statusSeqs are the seqs of the messages the receipt echoes in the outbox
// after row start carry, in outbox order (each READ; one message in
// message, several in messages).
func statusSeqs(t *testing.T, db *sqldb.DB, start int) []int32 {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT subject, payload FROM outbox WHERE seq > ? AND subject LIKE '`+
		natsx.SubjectMessageStatusEcho+`.%' ORDER BY seq`, start)
	require.NoError(t, err)
	defer rows.Close()
	var seqs []int32
	for rows.Next() {
		var subject string
		var payload []byte
		require.NoError(t, rows.Scan(&subject, &payload))
		require.Contains(t, subject, natsx.SubjectMessageStatusEcho)
		var e deliveryv1.MessageUpdated
		require.NoError(t, proto.Unmarshal(payload, &e))
		ms := e.GetMessages()
		if e.GetMessage() != nil {
			require.Empty(t, ms, "message or messages, not both")
			ms = []*deliveryv1.Message{e.GetMessage()}
		} else {
			require.Greater(t, len(ms), 1, "one message goes in message")
		}
		for _, m := range ms {
			require.Equal(t, deliveryv1.Message_READ, m.GetStatus())
			seqs = append(seqs, m.GetSeq())
		}
	}
	require.NoError(t, rows.Err())
	return seqs
}
