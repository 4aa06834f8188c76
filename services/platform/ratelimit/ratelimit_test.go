package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// TestTakeIsPerKeyAndSaysHowLongToWait: a bucket refuses past its burst
// without taking anything, names the wait, and other keys are unaffected.
func TestTakeIsPerKeyAndSaysHowLongToWait(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	l := New(LimitSends, 1, 2, nil)
	l.now = func() time.Time { return now }
	for range 2 {
		ok, _ := l.Take("a", 1)
		require.True(t, ok)
	}
	ok, wait := l.Take("a", 1)
	require.False(t, ok)
	require.InDelta(t, time.Second, wait, float64(time.Millisecond))
	ok, _ = l.Take("b", 1)
	require.True(t, ok, "another identity has its own bucket")
	now = now.Add(time.Second)
	ok, _ = l.Take("a", 1)
	require.True(t, ok, "refilled")
	ok, _ = l.Take("a", 3)
	require.False(t, ok, "more than the bucket holds")
}

// fakeStream yields upload frames.
type fakeStream struct {
	grpc.ServerStream
	ctx    context.Context
	chunks [][]byte
}

func (f *fakeStream) Context() context.Context { return f.ctx }

type chunkMsg struct{ chunk []byte }

func (m *chunkMsg) GetChunk() []byte { return m.chunk }

func (f *fakeStream) RecvMsg(m any) error {
	m.(*chunkMsg).chunk = f.chunks[0]
	f.chunks = f.chunks[1:]
	return nil
}

// TestUploadBytesPerIdentityAreLimited: the upload interceptor takes each
// chunk's bytes from the caller's bucket and ends the upload with
// RESOURCE_EXHAUSTED and a retry delay at the first chunk over it.
func TestUploadBytesPerIdentityAreLimited(t *testing.T) {
	m := NewMetrics()
	i := NewInterceptors(Config{UploadBytesPerMinute: 100}, m)
	ctx := auth.WithIdentity(context.Background(), auth.Identity{Subject: "p1", Role: auth.RolePatient, Practice: "demo"})
	ss := &fakeStream{ctx: ctx, chunks: [][]byte{make([]byte, 60), make([]byte, 30), make([]byte, 20)}}
	var got []error
	err := i.Stream(nil, ss, &grpc.StreamServerInfo{FullMethod: MethodUploadAttachment}, func(_ any, s grpc.ServerStream) error {
		for range 3 {
			got = append(got, s.RecvMsg(&chunkMsg{}))
		}
		return nil
	})
	require.NoError(t, err)
	require.NoError(t, got[0])
	require.NoError(t, got[1])
	require.Equal(t, codes.ResourceExhausted, status.Code(got[2]))
	require.Equal(t, LimitUploadBytes, errs.FromStatus(got[2]).(*errs.Error).Meta[errs.MetaLimit])
	require.GreaterOrEqual(t, errs.RetryAfter(got[2]), time.Second)
}

// Allow takes from the bucket of Key(who), whose key it builds without a
// string of its own.
func TestAllowUsesKeysBucket(t *testing.T) {
	l := New("sends", 1, 2, nil)
	who := auth.Identity{Practice: "p1", Subject: "u1", Role: "dentist"}
	require.Equal(t, "p1\x00users/u1", Key(who))
	ctx := auth.WithIdentity(context.Background(), who)
	require.NoError(t, l.Allow(ctx, 1, "slow down"))
	ok, _ := l.Take(Key(who), 1)
	require.True(t, ok, "the second of a burst of 2")
	require.Error(t, l.Allow(ctx, 1, "slow down"), "the same bucket, empty")
	require.Len(t, l.buckets, 1)
	other := auth.WithIdentity(context.Background(), auth.Identity{Practice: "p1", Subject: "u1", Role: auth.RolePatient})
	require.NoError(t, l.Allow(other, 1, "slow down"), "patients/u1 is another key")
	var buf [128]byte
	require.Zero(t, testing.AllocsPerRun(10, func() { _ = appendKey(buf[:0], who) }))
}
