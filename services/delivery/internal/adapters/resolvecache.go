package adapters

import (
	"context"
	"sync"
	"time"

	"github.com/clinicchat/clinicchat/services/delivery/internal/app"
	"github.com/clinicchat/clinicchat/services/platform/auth"
)

// DefaultResolveCacheSize bounds CachingConversations (entries; each a
// token, a conversation id and a patient id).
const DefaultResolveCacheSize = 10000

// CachingConversations remembers, per bearer token, the threads the
// conversation service let that token's caller into, until the token
// expires: a staff member sending a hundred messages into a thread, and the
// patient's stream acknowledging each, ask the conversation service once.
//
// This cannot go stale: the answer depends only on who the token names
// (practice, subject, role — fixed for the token's life) and on the thread's
// patient (a thread is one patient's for good; threads are never deleted or
// moved). Refusals are never cached, so every refusal is still decided, and
// audited, by the conversation service. If Resolve ever depends on something
// that changes (a thread's state, an assignment), this cache must go.
type CachingConversations struct {
	Inner app.Conversations
	Max   int // entries kept (default DefaultResolveCacheSize), after which the cache starts over
	Now   func() time.Time

	mu   sync.Mutex
	seen map[resolveKey]resolved
}

type resolveKey struct{ token, conversationID string }

type resolved struct {
	ref    app.ConversationRef
	expiry time.Time
}

// Resolve implements app.Conversations.
func (c *CachingConversations) Resolve(ctx context.Context, id string) (app.ConversationRef, error) {
	who, ok := auth.FromContext(ctx)
	if !ok || who.Token == "" || who.Expiry.IsZero() {
		return c.Inner.Resolve(ctx, id)
	}
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	k := resolveKey{who.Token, id}
	c.mu.Lock()
	r, hit := c.seen[k]
	c.mu.Unlock()
	if hit && now().Before(r.expiry) {
		return r.ref, nil
	}
	ref, err := c.Inner.Resolve(ctx, id)
	if err != nil {
		return ref, err
	}
	limit := c.Max
	if limit <= 0 {
		limit = DefaultResolveCacheSize
	}
	c.mu.Lock()
	if c.seen == nil || len(c.seen) >= limit {
		c.seen = make(map[resolveKey]resolved)
	}
	c.seen[k] = resolved{ref: ref, expiry: who.Expiry}
	c.mu.Unlock()
	return ref, nil
}
