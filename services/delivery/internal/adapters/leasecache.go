package adapters

import (
	"context"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
)

// DefaultLeaseCacheSize bounds LeasedPreferences (entries; each a token, a
// patient name and the patient).
const DefaultLeaseCacheSize = 10000

// getPatientMethod is the one call LeasedPreferences keeps answers of.
const getPatientMethod = "/clinicchat.preferences.v1.PreferencesService/GetPatient"

// LeasedPreferences is a connection to the preferences service that keeps
// GetPatient answers for as long as the answering server leased them
// (grpcx.ReadLeaseHeader), per bearer token and patient: a staff member
// sending a hundred messages a second into one thread asks the preferences
// service a few times a second instead of once per send.
//
// It cannot serve a stale opt-out: the lease is counted from before the
// question was sent, and the preferences service acknowledges a patient
// write only a lease after its commit. So an answer still held when a send
// starts was asked for after every write acknowledged before that send
// started, and read the database after their commits. Answers without a
// lease (a server without one, the all-in-one's) and errors are never kept;
// nor beyond the token's expiry, nor for a call without a verified token.
// Every other call goes through unchanged.
type LeasedPreferences struct {
	grpc.ClientConnInterface
	Max int              // entries kept (default DefaultLeaseCacheSize), after which the cache starts over
	Now func() time.Time // the clock (default time.Now, monotonic)

	mu   sync.Mutex
	kept map[leaseKey]leased
}

type leaseKey struct{ token, name string }

type leased struct {
	patient *preferencesv1.Patient
	expiry  time.Time
}

// Invoke implements grpc.ClientConnInterface.
func (l *LeasedPreferences) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	req, isGet := args.(*preferencesv1.GetPatientRequest)
	out, isPatient := reply.(*preferencesv1.Patient)
	who, ok := auth.FromContext(ctx)
	if method != getPatientMethod || !isGet || !isPatient || !ok || who.Token == "" || who.Expiry.IsZero() {
		return l.ClientConnInterface.Invoke(ctx, method, args, reply, opts...)
	}
	now := time.Now
	if l.Now != nil {
		now = l.Now
	}
	k := leaseKey{who.Token, req.GetName()}
	asked := now()
	l.mu.Lock()
	e, hit := l.kept[k]
	l.mu.Unlock()
	if hit && asked.Before(e.expiry) {
		proto.Merge(out, e.patient)
		return nil
	}
	var header metadata.MD
	if err := l.ClientConnInterface.Invoke(ctx, method, args, reply, append(opts, grpc.Header(&header))...); err != nil {
		return err
	}
	v := header.Get(grpcx.ReadLeaseHeader)
	if len(v) != 1 {
		return nil
	}
	us, err := strconv.ParseInt(v[0], 10, 64)
	if err != nil || us <= 0 {
		return nil
	}
	expiry := asked.Add(time.Duration(us) * time.Microsecond)
	if who.Expiry.Before(expiry) {
		expiry = who.Expiry
	}
	limit := l.Max
	if limit <= 0 {
		limit = DefaultLeaseCacheSize
	}
	kept := proto.Clone(out).(*preferencesv1.Patient)
	l.mu.Lock()
	if l.kept == nil || len(l.kept) >= limit {
		l.kept = make(map[leaseKey]leased)
	}
	l.kept[k] = leased{patient: kept, expiry: expiry}
	l.mu.Unlock()
	return nil
}
