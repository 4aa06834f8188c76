package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/attachment/internal/domain"
	"github.com/clinicchat/clinicchat/services/attachment/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/platform/sqldb"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// The repository contract, run against every backend (SQLite, PostgreSQL).
func TestRepositoryContract(t *testing.T) {
	t.Parallel()
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			db := testkit.OpenDB(t, b)
			st, err := store.New(context.Background(), db)
			require.NoError(t, err)
			for name, test := range map[string]func(*testing.T, *store.Store, *sqldb.DB){
				"create and get":           testCreateGet,
				"practice scoping":         testPracticeScoping,
				"links are idempotent":     testLinks,
				"record writes the outbox": testRecord,
				"migrate twice":            testMigrateTwice,
			} {
				t.Run(name, func(t *testing.T) { test(t, st, db) })
			}
		})
	}
}

func attachment(practice string) domain.Attachment {
	return domain.Attachment{
		Practice: practice, ID: ids.New(), ConversationID: ids.New(), Uploader: "users/dr-a", UploaderRole: "dentist",
		Filename: "Röntgen.png", ContentType: "image/png", SizeBytes: 1234,
		SHA256:     "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		CreateTime: time.Now().UTC().Truncate(time.Microsecond),
	}
}

func access(action string) domain.Event {
	id := ids.New()
	return domain.Event{ID: id, Subject: "clinicchat.attachment.access.recorded",
		Msg: &typev1.AccessRecorded{Meta: &typev1.EventMeta{Id: id, Action: action}}}
}

// outboxEvent returns the payload of outbox row id, or nil.
func outboxEvent(t *testing.T, db *sqldb.DB, id string) *typev1.EventEnvelope {
	t.Helper()
	var payload []byte
	var n int
	require.NoError(t, db.QueryRow(context.Background(), `SELECT COUNT(*) FROM outbox WHERE id = ?`, id).Scan(&n))
	if n == 0 {
		return nil
	}
	require.NoError(t, db.QueryRow(context.Background(), `SELECT payload FROM outbox WHERE id = ?`, id).Scan(&payload))
	var env typev1.EventEnvelope
	require.NoError(t, proto.Unmarshal(payload, &env))
	return &env
}

func testCreateGet(t *testing.T, st *store.Store, db *sqldb.DB) {
	ctx := context.Background()
	a := attachment("p1")
	ev := access("attachment.upload")
	require.NoError(t, st.Create(ctx, a, ev))
	got, err := st.Get(ctx, "p1", a.ID)
	require.NoError(t, err)
	require.Equal(t, a, got)
	env := outboxEvent(t, db, ev.ID)
	require.NotNil(t, env, "the event commits with the row")
	require.Equal(t, "attachment.upload", env.GetMeta().GetAction())

	_, err = st.Get(ctx, "p1", ids.New())
	require.ErrorIs(t, err, domain.ErrNotFound)
}

func testPracticeScoping(t *testing.T, st *store.Store, _ *sqldb.DB) {
	ctx := context.Background()
	a := attachment("p1")
	require.NoError(t, st.Create(ctx, a))
	_, err := st.Get(ctx, "p2", a.ID)
	require.ErrorIs(t, err, domain.ErrNotFound)
	require.NoError(t, st.AddLinks(ctx, domain.Link{Practice: "p1", AttachmentID: a.ID, Message: "conversations/c/messages/1",
		Sender: "users/u", Sensitive: true, CreateTime: time.Now()}))
	links, err := st.Links(ctx, "p2", a.ID)
	require.NoError(t, err)
	require.Empty(t, links)
}

func testLinks(t *testing.T, st *store.Store, _ *sqldb.DB) {
	ctx := context.Background()
	a := attachment("p1")
	require.NoError(t, st.Create(ctx, a))
	links, err := st.Links(ctx, "p1", a.ID)
	require.NoError(t, err)
	require.Empty(t, links)

	now := time.Now().UTC().Truncate(time.Microsecond)
	first := domain.Link{Practice: "p1", AttachmentID: a.ID, Message: "conversations/c/messages/1", Sender: "users/u", CreateTime: now}
	second := domain.Link{Practice: "p1", AttachmentID: a.ID, Message: "conversations/c/messages/2", Sender: "patients/p",
		Sensitive: true, CreateTime: now.Add(time.Second)}
	require.NoError(t, st.AddLinks(ctx, first, second))
	// A replay, even one that disagrees, changes nothing.
	replay := first
	replay.Sensitive = true
	require.NoError(t, st.AddLinks(ctx, replay, second))
	require.NoError(t, st.AddLinks(ctx))

	links, err = st.Links(ctx, "p1", a.ID)
	require.NoError(t, err)
	require.Equal(t, []domain.Link{first, second}, links)
}

func testRecord(t *testing.T, st *store.Store, db *sqldb.DB) {
	ctx := context.Background()
	e1, e2 := access("attachment.download"), access("attachment.view")
	require.NoError(t, st.Record(ctx, e1, e2))
	require.NoError(t, st.Record(ctx))
	require.Equal(t, "attachment.download", outboxEvent(t, db, e1.ID).GetMeta().GetAction())
	require.Equal(t, "attachment.view", outboxEvent(t, db, e2.ID).GetMeta().GetAction())
	// The same event id twice is refused: the outbox never holds duplicates.
	require.Error(t, st.Record(ctx, e1))
}

func testMigrateTwice(t *testing.T, _ *store.Store, db *sqldb.DB) {
	_, err := store.New(context.Background(), db)
	require.NoError(t, err)
}
