package auth

import (
	"context"
	"sync"
	"time"
)

// CachingVerifier remembers tokens another Verifier accepted until they
// expire, so a request that crosses several services (each verifying the
// same token) pays for one signature check. Refusals are not cached.
type CachingVerifier struct {
	inner Verifier
	max   int
	now   func() time.Time

	mu   sync.Mutex
	seen map[string]Identity
}

// NewCachingVerifier wraps inner; at most max tokens are kept (default 10,000),
// after which the cache starts over.
func NewCachingVerifier(inner Verifier, max int) *CachingVerifier {
	if max <= 0 {
		max = 10000
	}
	return &CachingVerifier{inner: inner, max: max, now: time.Now, seen: map[string]Identity{}}
}

// Verify implements Verifier.
func (c *CachingVerifier) Verify(ctx context.Context, token string) (Identity, error) {
	now := c.now()
	c.mu.Lock()
	id, ok := c.seen[token]
	c.mu.Unlock()
	if ok && now.Before(id.Expiry) {
		return id, nil
	}
	id, err := c.inner.Verify(ctx, token)
	if err != nil || id.Expiry.IsZero() {
		return id, err
	}
	c.mu.Lock()
	if len(c.seen) >= c.max {
		c.seen = map[string]Identity{}
	}
	c.seen[token] = id
	c.mu.Unlock()
	return id, nil
}
