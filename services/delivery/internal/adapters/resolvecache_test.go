package adapters_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/delivery/internal/adapters"
	"github.com/clinicchat/clinicchat/services/delivery/internal/app"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// countingConversations is a hand-written fake of the conversation port: it
// lets the practice's staff and patient p1 into thread "c1", and counts the calls.
type countingConversations struct{ calls int }

func (f *countingConversations) Resolve(ctx context.Context, id string) (app.ConversationRef, error) {
	f.calls++
	who, _ := auth.FromContext(ctx)
	if id != "c1" || who.Practice != "demo" || (who.IsPatient() && who.Subject != "p1") {
		return app.ConversationRef{}, errs.NotFound("Conversation not found")
	}
	return app.ConversationRef{ID: id, PatientID: "p1"}, nil
}

func TestCachingConversationsAsksOncePerTokenAndThread(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	inner := &countingConversations{}
	c := &adapters.CachingConversations{Inner: inner, Max: 3, Now: func() time.Time { return now }}
	as := func(token, subject, role string) context.Context {
		return auth.WithIdentity(context.Background(), auth.Identity{Subject: subject, Role: role, Practice: "demo",
			Token: token, Expiry: now.Add(time.Minute)})
	}
	staff, patient, other := as("t-staff", "u1", "dentist"), as("t-p1", "p1", auth.RolePatient), as("t-p2", "p2", auth.RolePatient)

	for range 3 {
		ref, err := c.Resolve(staff, "c1")
		require.NoError(t, err)
		require.Equal(t, app.ConversationRef{ID: "c1", PatientID: "p1"}, ref)
	}
	require.Equal(t, 1, inner.calls, "one token, one thread: asked once")
	_, err := c.Resolve(patient, "c1")
	require.NoError(t, err)
	require.Equal(t, 2, inner.calls, "another token is asked for itself")

	for range 2 {
		_, err = c.Resolve(other, "c1")
		require.ErrorIs(t, err, errs.NotFound(""))
	}
	require.Equal(t, 4, inner.calls, "refusals are never cached: each is decided (and audited) again")

	_, err = c.Resolve(context.Background(), "c1")
	require.ErrorIs(t, err, errs.NotFound(""), "no identity: passed through")
	require.Equal(t, 5, inner.calls)

	now = now.Add(2 * time.Minute) // the staff token has expired
	_, err = c.Resolve(staff, "c1")
	require.NoError(t, err)
	require.Equal(t, 6, inner.calls, "an expired token's entry is not used")

	// Bounded: past Max entries the cache starts over.
	for i, tok := range []string{"a", "b", "c", "d"} {
		_, err := c.Resolve(as(tok, "u", "dentist"), "c1")
		require.NoError(t, err, i)
	}
	require.Equal(t, 10, inner.calls)
}
