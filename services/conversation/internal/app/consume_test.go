package app

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// The projection's batch consumer (as conversation.Service runs it): an
// event that cannot be decoded is terminated on its own while the rest of
// its batch is projected, and each message's events continue its own trace
// (the outbox rows carry the trace of the message.created they follow).
func TestBatchConsumerTerminatesPoisonAloneAndKeepsEachTrace(t *testing.T) {
	telemetry.Install(sdktrace.NewTracerProvider())
	t.Cleanup(func() { telemetry.Install(noop.NewTracerProvider()) })
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, _, js := testkit.NATS(t)
			db := testkit.OpenDB(t, b)
			st, err := store.New(ctx, db)
			require.NoError(t, err)
			c, _, err := st.Create(ctx, domain.Conversation{Practice: "p1", ID: ids.New(), PatientID: "pa",
				PatientDisplayName: "Alice", State: domain.Active, CreateTime: time.Now()}, func(domain.Conversation) []domain.Event { return nil })
			require.NoError(t, err)
			a := New(st, nil, testkit.Logger(t))

			// Published before the consumer starts: one batch.
			traces := []string{"0af7651916cd43dd8448eb211c80319c", "", "4bf92f3577b34da6a3ce929d0e0e4736"}
			for i, trace := range traces {
				seq := i + 1
				msg := nats.NewMsg(natsx.Tenant(natsx.SubjectMessageCreated, "p1", "patients/pa"))
				msg.Data, err = proto.Marshal(&deliveryv1.MessageCreated{Meta: &typev1.EventMeta{Id: ids.New(), Practice: "p1"},
					Message: &deliveryv1.Message{Name: c.Name() + "/messages/" + string(rune('0'+seq)), Seq: int32(seq),
						Sender: "users/u1", SenderRole: "dentist", CreateTime: timestamppb.Now(), Text: "hi"}})
				require.NoError(t, err)
				if i == 1 {
					msg.Data = []byte("not an event")
				}
				if trace != "" {
					msg.Header.Set(telemetry.HeaderTraceparent, "00-"+trace+"-00f067aa0ba902b7-01")
				}
				_, err = js.PublishMsg(ctx, msg)
				require.NoError(t, err)
			}
			spec := natsx.ConsumerSpec{Stream: natsx.StreamDelivery, Durable: "conversation-projection",
				FilterSubjects: natsx.Filter(natsx.SubjectMessageCreated)}
			done := make(chan error, 1)
			go func() {
				done <- natsx.ConsumeBatch(ctx, js, testkit.Logger(t), spec, 64, func(ctx context.Context, msgs []jetstream.Msg) []error {
					return a.HandleMessagesCreated(ctx, msgs, func(string) string { return "Practice" })
				})
			}()
			require.Eventually(t, func() bool {
				cons, err := js.Consumer(ctx, natsx.StreamDelivery, spec.Durable)
				if err != nil {
					return false // not created yet
				}
				info := cons.CachedInfo()
				return info.AckFloor.Stream == 3 && info.NumAckPending == 0
			}, 10*time.Second, 10*time.Millisecond, "all three settled")
			got, err := st.GetShared(ctx, "p1", c.ID)
			require.NoError(t, err)
			require.EqualValues(t, 3, got.LastMessageSeq, "messages 1 and 3 projected")

			rows, err := db.Query(ctx, `SELECT subject, COALESCE(traceparent, '') FROM outbox ORDER BY seq`)
			require.NoError(t, err)
			defer rows.Close()
			var told []string
			for rows.Next() {
				var subject, tp string
				require.NoError(t, rows.Scan(&subject, &tp))
				if strings.HasPrefix(subject, natsx.SubjectConversationEcho+".") { // the thread activity echo
					require.Len(t, tp, 55, "a traceparent")
					told = append(told, tp[3:35])
				}
			}
			require.NoError(t, rows.Err())
			require.Equal(t, []string{traces[0], traces[2]}, told, "each update in its message's trace")
			cancel()
			require.NoError(t, <-done)
		})
	}
}
