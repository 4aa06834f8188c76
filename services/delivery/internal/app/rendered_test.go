package app_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/app"
	"github.com/clinicchat/clinicchat/services/delivery/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// SendRendered answers a new message with what its message.created event
// carries, the message in full as stored (ToProto), and a repeat of the
// request with the stored message rendered the same way.
func TestSendRenderedIsTheStoredMessageInFull(t *testing.T) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db := testkit.OpenDB(t, b)
			repo, err := store.New(ctx, db)
			require.NoError(t, err)
			a := app.New(repo, fakeConversations{"c1": {ID: "c1", PatientID: "pat"}},
				fakePatients{"pat": {HasPortalAccount: true, ChatOptIn: true}}, oneAttachment{}, fakeArtifacts{}, testkit.Logger(t))
			staff := auth.WithIdentity(ctx, auth.Identity{Subject: "u1", Role: "dentist", Practice: "p1", Name: "Dr Lee"})
			req := app.SendRequest{Parent: "conversations/c1", Text: "x-ray", RequestID: "a", Attachments: []string{"attachments/x"}}
			got, err := a.SendRendered(staff, req)
			require.NoError(t, err)
			stored, err := repo.Get(ctx, "p1", "c1", 1)
			require.NoError(t, err)
			require.True(t, proto.Equal(app.ToProto(stored), got), "answer %v", got)
			require.Nil(t, got.GetDeliverTime(), "not delivered yet")

			var payload []byte
			require.NoError(t, db.QueryRow(ctx, `SELECT payload FROM outbox ORDER BY seq LIMIT 1`).Scan(&payload))
			var created deliveryv1.MessageCreated
			require.NoError(t, proto.Unmarshal(payload, &created))
			require.True(t, proto.Equal(got, created.GetMessage()), "the event carries what the sender was answered")

			again, err := a.SendRendered(staff, req)
			require.NoError(t, err)
			require.True(t, proto.Equal(got, again), "a repeat is answered with the stored message")
		})
	}
}
