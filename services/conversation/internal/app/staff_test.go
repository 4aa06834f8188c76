package app

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/conversation/internal/store"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// countingRepo counts the staff writes that reach the real store.
type countingRepo struct {
	domain.Repository
	saves int
}

func (r *countingRepo) SaveStaff(ctx context.Context, m domain.StaffMember) error {
	r.saves++
	return r.Repository.SaveStaff(ctx, m)
}

// A staff caller is written when new or changed, not on every call; patients
// and systems are never staff.
func TestStaffAreRecordedOnceUntilTheirTokenChanges(t *testing.T) {
	st, err := store.New(context.Background(), testkit.OpenDB(t, testkit.Backends()[0]))
	require.NoError(t, err)
	repo := &countingRepo{Repository: st}
	a := New(repo, nil, testkit.Logger(t))
	call := func(id auth.Identity) {
		t.Helper()
		_, _, err := a.List(auth.WithIdentity(context.Background(), id), ListRequest{})
		require.NoError(t, err)
	}
	lee := auth.Identity{Subject: "lee", Practice: "p1", Role: auth.RoleDentist, Name: "Dr Lee", Expiry: time.Now().Add(time.Hour)}
	call(lee)
	call(lee)
	call(lee)
	require.Equal(t, 1, repo.saves, "one write for a new user")
	lee.Name = "Dr Grace Lee"
	call(lee)
	call(lee)
	require.Equal(t, 2, repo.saves, "one more when the name changed")
	call(auth.Identity{Subject: "lee", Practice: "p2", Role: auth.RoleDentist, Name: "Dr Grace Lee"})
	require.Equal(t, 3, repo.saves, "each practice learns its own staff")
	call(auth.Identity{Subject: "alice", Practice: "p1", Role: auth.RolePatient})
	call(auth.Identity{Subject: "pms", Practice: "p1", Role: auth.RoleSystem})
	require.Equal(t, 3, repo.saves, "patients and systems are not staff")

	list, _, err := a.ListStaff(auth.WithIdentity(context.Background(), lee), 0, "")
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, "Dr Grace Lee", list[0].DisplayName)
}
