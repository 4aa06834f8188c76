package app_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/app"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/outbox"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// echoFixture is the delivery app on a backend, with a staff member and
// the thread's patient.
func echoFixture(t *testing.T, b testkit.Backend) (*app.App, *sqldb.DB, context.Context, context.Context) {
	t.Helper()
	db := testkit.OpenDB(t, b)
	repo, err := store.New(context.Background(), db)
	require.NoError(t, err)
	a := app.New(repo, fakeConversations{"c1": {ID: "c1", PatientID: "pat"}},
		fakePatients{"pat": {HasPortalAccount: true, ChatOptIn: true}}, nil, fakeArtifacts{}, testkit.Logger(t))
	staff := auth.WithIdentity(context.Background(), auth.Identity{Subject: "u1", Role: "dentist", Practice: "p1"})
	patient := auth.WithIdentity(context.Background(), auth.Identity{Subject: "pat", Role: "patient", Practice: "p1"})
	return a, db, staff, patient
}

func sendN(t *testing.T, a *app.App, ctx context.Context, n int, text string) {
	t.Helper()
	for i := range n {
		_, err := a.Send(ctx, app.SendRequest{Parent: "conversations/c1", Text: text, RequestID: fmt.Sprint("r", i)})
		require.NoError(t, err)
	}
}

// statusMessages is what a receipt echo carries: message, then messages.
func statusMessages(e *deliveryv1.MessageUpdated) []*deliveryv1.Message {
	if e.GetMessage() != nil {
		return append([]*deliveryv1.Message{e.GetMessage()}, e.GetMessages()...)
	}
	return e.GetMessages()
}

// A receipt advance over five messages (DELIVERED when the patient's
// stream got them, then READ when they opened the thread) is one event on
// the stream each, carrying the five messages in seq order; on both
// backends, through the outbox relay into JetStream.
func TestReceiptAdvanceIsOneEventOnTheStream(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, _, js := testkit.NATS(t)
			a, db, staff, patient := echoFixture(t, b)
			sendN(t, a, staff, 5, "m")
			relay := outbox.NewRelay(db, js, testkit.Logger(t))
			done := make(chan error, 1)
			go func() { done <- relay.Run(ctx) }()
			defer func() { cancel(); <-done }()

			_, err := a.MarkDelivered(patient, "conversations/c1", 5)
			require.NoError(t, err)
			for i, err := range a.HandleConversationReads(ctx, []jetstream.Msg{readEvent(t, "patients/pat", "patient", 5)}) {
				require.NoError(t, err, "receipt %d", i)
			}

			echoes := natsx.Filter(natsx.SubjectMessageStatusEcho)
			stream, err := js.Stream(ctx, natsx.StreamDelivery)
			require.NoError(t, err)
			cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: echoes})
			require.NoError(t, err)
			for _, want := range []deliveryv1.Message_Status{deliveryv1.Message_DELIVERED, deliveryv1.Message_READ} {
				m, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
				require.NoError(t, err)
				var e deliveryv1.MessageUpdated
				require.NoError(t, proto.Unmarshal(m.Data(), &e))
				require.Nil(t, e.GetMessage())
				require.Equal(t, "patients/pat", e.GetPatient())
				require.Equal(t, "message.status", e.GetMeta().GetAction())
				var seqs []int32
				for _, msg := range e.GetMessages() {
					require.Equal(t, want, msg.GetStatus())
					seqs = append(seqs, msg.GetSeq())
				}
				require.Equal(t, []int32{1, 2, 3, 4, 5}, seqs, "%v: the whole advance in one event", want)
			}
			var held uint64
			for _, f := range echoes {
				info, err := stream.Info(ctx, jetstream.WithSubjectFilter(f))
				require.NoError(t, err)
				for _, n := range info.State.Subjects {
					held += n
				}
			}
			require.Equal(t, uint64(2), held, "two advances: two events on the stream, not ten")
		})
	}
}

// An advance over more messages than one event carries is split into
// events of at most 64 messages, and of about 64 KiB: each message in
// exactly one of them, in order.
func TestReceiptAdvanceSplitsIntoBoundedEvents(t *testing.T) {
	for _, tc := range []struct {
		name  string
		n     int
		text  string
		sizes []int
	}{
		{"by count", 150, "m", []int{64, 64, 22}},
		{"by size", 10, strings.Repeat("x", 10000), []int{6, 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			a, db, staff, _ := echoFixture(t, testkit.Backends()[0])
			sendN(t, a, staff, tc.n, tc.text)
			var start int
			require.NoError(t, db.QueryRow(ctx, `SELECT COALESCE(MAX(seq), 0) FROM outbox`).Scan(&start))
			for _, err := range a.HandleConversationReads(ctx, []jetstream.Msg{readEvent(t, "patients/pat", "patient", int64(tc.n))}) {
				require.NoError(t, err)
			}
			rows, err := db.Query(ctx, `SELECT payload FROM outbox WHERE seq > ? ORDER BY seq`, start)
			require.NoError(t, err)
			defer rows.Close()
			var sizes []int
			next := int32(1)
			for rows.Next() {
				var payload []byte
				require.NoError(t, rows.Scan(&payload))
				require.LessOrEqual(t, len(payload), 80<<10)
				var e deliveryv1.MessageUpdated
				require.NoError(t, proto.Unmarshal(payload, &e))
				ms := statusMessages(&e)
				for _, m := range ms {
					require.Equal(t, next, m.GetSeq())
					next++
				}
				sizes = append(sizes, len(ms))
			}
			require.NoError(t, rows.Err())
			require.Equal(t, tc.sizes, sizes)
		})
	}
}
