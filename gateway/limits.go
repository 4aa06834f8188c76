package gateway

import (
	"net/http"
	"strconv"
	"sync"

	"google.golang.org/grpc/codes"
)

// Reasons a /v1/events stream is refused, as labels of
// clinicchat_gateway_sse_refused_total.
const (
	refusedPerIdentity = "per_identity"
	refusedGateway     = "gateway_full"
	refusedUnavailable = "unavailable"
	refusedShutdown    = "shutting_down"
)

// streamRetryAfter is the Retry-After of a refused stream, in seconds.
const streamRetryAfter = 5

// streamLimits bounds concurrent event streams per identity (practice and
// principal: the same user id in two practices is two identities) and per
// gateway.
type streamLimits struct {
	perIdentity, total int

	mu    sync.Mutex
	open  map[string]int
	count int
}

func newStreamLimits(perIdentity, total int) *streamLimits {
	return &streamLimits{perIdentity: perIdentity, total: total, open: map[string]int{}}
}

// acquire takes a slot for key, or returns the refusal reason.
func (l *streamLimits) acquire(key string) (release func(), refused string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[key] >= l.perIdentity {
		return nil, refusedPerIdentity
	}
	if l.count >= l.total {
		return nil, refusedGateway
	}
	l.open[key]++
	l.count++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.open[key]--; l.open[key] <= 0 {
				delete(l.open, key)
			}
			l.count--
		})
	}, ""
}

// refuseStream writes the 429 of a refused stream (SPEC: RESOURCE_EXHAUSTED
// with Retry-After).
func (s *Server) refuseStream(w http.ResponseWriter, r *http.Request, reason string) {
	s.metrics.sseRefused.WithLabelValues(reason).Inc()
	msg := "Too many live-update connections are open for you; close a tab or try again shortly"
	if reason == refusedGateway {
		msg = "This server has too many live-update connections open; try again shortly"
	}
	w.Header().Set("Retry-After", strconv.Itoa(streamRetryAfter))
	s.writeError(w, r, newAPIError(codes.ResourceExhausted, codeReason(codes.ResourceExhausted), msg).withHTTP(http.StatusTooManyRequests))
}
