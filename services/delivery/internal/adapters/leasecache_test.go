package adapters_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/delivery/internal/adapters"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
)

// fakePreferences is the preferences service on a fake clock: GetPatient
// reads the patient's opt-in partway through the call (read), runs during
// after it (a concurrent write) and answers at the end (took), with the
// lease in its header when lease > 0.
type fakePreferences struct {
	now         *time.Time
	lease       time.Duration
	optIn       bool
	read, took  time.Duration
	during      func()
	fail        bool
	calls       int
	otherCalled int
}

func (f *fakePreferences) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	if method != "/clinicchat.preferences.v1.PreferencesService/GetPatient" {
		f.otherCalled++
		return nil
	}
	f.calls++
	start := *f.now
	*f.now = start.Add(f.read)
	optIn := f.optIn
	if f.during != nil {
		f.during()
		f.during = nil
	}
	*f.now = start.Add(f.took)
	if f.fail {
		return status.Error(codes.Unavailable, "down")
	}
	for _, o := range opts {
		if h, ok := o.(grpc.HeaderCallOption); ok && f.lease > 0 {
			*h.HeaderAddr = metadata.Pairs(grpcx.ReadLeaseHeader, strconv.FormatInt(f.lease.Microseconds(), 10))
		}
	}
	reply.(*preferencesv1.Patient).Name = args.(*preferencesv1.GetPatientRequest).GetName()
	reply.(*preferencesv1.Patient).ChatOptIn = optIn
	return nil
}

func (f *fakePreferences) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	panic("not used")
}

func leaseSetup(t *testing.T, lease time.Duration) (*fakePreferences, preferencesv1.PreferencesServiceClient, *time.Time, func(token string, expiry time.Duration) context.Context) {
	t.Helper()
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	f := &fakePreferences{now: &now, lease: lease, optIn: true}
	l := &adapters.LeasedPreferences{ClientConnInterface: f, Max: 3, Now: func() time.Time { return now }}
	as := func(token string, expiry time.Duration) context.Context {
		return auth.WithIdentity(context.Background(), auth.Identity{Subject: "u1", Role: "dentist", Practice: "demo",
			Token: token, Expiry: now.Add(expiry)})
	}
	return f, preferencesv1.NewPreferencesServiceClient(l), &now, as
}

func getPatient(t *testing.T, c preferencesv1.PreferencesServiceClient, ctx context.Context, name string) *preferencesv1.Patient {
	t.Helper()
	p, err := c.GetPatient(ctx, &preferencesv1.GetPatientRequest{Name: name})
	require.NoError(t, err)
	require.Equal(t, name, p.GetName())
	return p
}

// An answer is kept for the lease, counted from before the question: a
// read that started before an opt-out committed, answered after it, is
// gone when the opt-out is acknowledged (a lease after its commit).
func TestLeasedPreferencesNeverOutlivesAnAcknowledgedWrite(t *testing.T) {
	const lease = 100 * time.Millisecond
	f, c, now, as := leaseSetup(t, lease)
	ctx := as("t1", time.Hour)
	start := *now
	var acked time.Time
	// The first read reads at +45 ms (opted in); the opt-out commits at
	// +50 ms and is acknowledged a lease later; the answer arrives at +90 ms.
	f.read, f.took = 45*time.Millisecond, 90*time.Millisecond
	f.during = func() {
		*now = start.Add(50 * time.Millisecond)
		f.optIn = false
		acked = now.Add(lease)
	}
	require.True(t, getPatient(t, c, ctx, "patients/p1").GetChatOptIn())
	require.Equal(t, 1, f.calls)
	f.read, f.took = 0, 0
	// Before the acknowledgement the kept answer may still be served…
	*now = start.Add(99 * time.Millisecond)
	require.True(t, getPatient(t, c, ctx, "patients/p1").GetChatOptIn())
	require.Equal(t, 1, f.calls, "kept within the lease")
	// …from the acknowledgement on, never (counted from the answer it would be kept until +190 ms).
	*now = acked
	require.False(t, getPatient(t, c, ctx, "patients/p1").GetChatOptIn())
	require.Equal(t, 2, f.calls)
}

func TestLeasedPreferencesKeepsOnlyLeasedAnswers(t *testing.T) {
	const lease = 100 * time.Millisecond
	t.Run("no lease, no keeping", func(t *testing.T) {
		f, c, _, as := leaseSetup(t, 0)
		for range 3 {
			getPatient(t, c, as("t1", time.Hour), "patients/p1")
		}
		require.Equal(t, 3, f.calls)
	})
	t.Run("per token and patient", func(t *testing.T) {
		f, c, _, as := leaseSetup(t, lease)
		getPatient(t, c, as("t1", time.Hour), "patients/p1")
		getPatient(t, c, as("t1", time.Hour), "patients/p1")
		require.Equal(t, 1, f.calls)
		getPatient(t, c, as("t2", time.Hour), "patients/p1")
		getPatient(t, c, as("t1", time.Hour), "patients/p2")
		require.Equal(t, 3, f.calls)
		// Without a verified token: always asked.
		getPatient(t, c, context.Background(), "patients/p1")
		getPatient(t, c, context.Background(), "patients/p1")
		require.Equal(t, 5, f.calls)
	})
	t.Run("errors are never kept", func(t *testing.T) {
		f, c, _, as := leaseSetup(t, lease)
		f.fail = true
		for range 2 {
			_, err := c.GetPatient(as("t1", time.Hour), &preferencesv1.GetPatientRequest{Name: "patients/p1"})
			require.Equal(t, codes.Unavailable, status.Code(err))
		}
		require.Equal(t, 2, f.calls)
		f.fail = false
		getPatient(t, c, as("t1", time.Hour), "patients/p1")
		getPatient(t, c, as("t1", time.Hour), "patients/p1")
		require.Equal(t, 3, f.calls)
	})
	t.Run("not beyond the token's expiry", func(t *testing.T) {
		f, c, now, as := leaseSetup(t, lease)
		ctx := as("t1", 10*time.Millisecond)
		getPatient(t, c, ctx, "patients/p1")
		*now = now.Add(10 * time.Millisecond)
		getPatient(t, c, ctx, "patients/p1")
		require.Equal(t, 2, f.calls)
	})
	t.Run("other calls pass through", func(t *testing.T) {
		f, c, _, as := leaseSetup(t, lease)
		_, err := c.GetCommunicationPreferences(as("t1", time.Hour), &preferencesv1.GetCommunicationPreferencesRequest{Name: "patients/p1/communicationPreferences"})
		require.NoError(t, err)
		require.Equal(t, 1, f.otherCalled)
		require.Equal(t, 0, f.calls)
	})
}
