package app

import (
	"context"
	"sync"
	"time"

	"github.com/clinicchat/clinicchat/services/conversation/internal/domain"
	"github.com/clinicchat/clinicchat/services/platform/auth"
)

// staffCacheMax bounds the in-memory record of staff already saved; past it
// the cache starts over (the next call of each user writes once more).
const staffCacheMax = 10_000

// staffCache remembers which staff users, with which name and role, are
// already saved, so a call writes only when a user is new or changed.
type staffCache struct {
	mu   sync.Mutex
	seen map[staffKey]staffVal
}

type staffKey struct{ practice, subject string }
type staffVal struct{ name, role string }

// see records who as staff of their practice unless already recorded as is.
func (c *staffCache) see(ctx context.Context, repo domain.Repository, who auth.Identity, now time.Time) error {
	k, v := staffKey{who.Practice, who.Subject}, staffVal{who.Name, who.Role}
	c.mu.Lock()
	known, ok := c.seen[k]
	c.mu.Unlock()
	if ok && known == v {
		return nil
	}
	err := repo.SaveStaff(ctx, domain.StaffMember{Practice: who.Practice, User: who.Principal(), DisplayName: who.Name,
		Role: who.Role, UpdateTime: now.UTC()})
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.seen == nil || len(c.seen) >= staffCacheMax {
		c.seen = make(map[staffKey]staffVal)
	}
	c.seen[k] = v
	c.mu.Unlock()
	return nil
}
