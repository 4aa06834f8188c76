// Package ratelimit holds clinicchat's per-identity limits: token buckets
// keyed by the verified caller (practice and principal), and gRPC
// interceptors that apply them to chosen methods, answering
// RESOURCE_EXHAUSTED with a google.rpc.RetryInfo (the gateway turns it into
// HTTP 429 with Retry-After). The defaults are far above what a person does:
// they stop scripts and runaway clients, never a busy receptionist.
package ratelimit

import (
	"context"
	"errors"
	"flag"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"

	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// Limit names (the ErrorInfo metadata "limit" and the metrics label).
const (
	LimitSends       = "sends"
	LimitUploadBytes = "upload_bytes"
)

// Methods the limits apply to.
const (
	MethodCreateMessage    = "/clinicchat.delivery.v1.DeliveryService/CreateMessage"
	MethodUploadAttachment = "/clinicchat.attachment.v1.AttachmentService/UploadAttachment"
)

// Defaults of Config.
const (
	DefaultSendsPerSecond    = 10
	DefaultSendBurst         = 60
	DefaultUploadBytesPerMin = 200 << 20
)

// maxKeys bounds the identities tracked per limiter; past it, buckets that
// have refilled (their identity idle) are forgotten first.
const maxKeys = 100_000

// Config is the per-identity limits of a gRPC server.
type Config struct {
	// SendsPerSecond and SendBurst: a token bucket of message sends.
	SendsPerSecond float64
	SendBurst      int
	// UploadBytesPerMinute: attachment bytes an identity may upload per
	// minute (also the burst).
	UploadBytesPerMinute int64
}

// Flags registers the limits' flags.
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.Float64Var(&c.SendsPerSecond, "limit-sends-per-second", DefaultSendsPerSecond, "message sends per second per identity (token bucket rate)")
	fs.IntVar(&c.SendBurst, "limit-send-burst", DefaultSendBurst, "message sends an identity may make at once (token bucket size)")
	fs.Int64Var(&c.UploadBytesPerMinute, "limit-upload-bytes-per-minute", DefaultUploadBytesPerMin, "attachment bytes an identity may upload per minute")
}

// WithDefaults fills zero fields with the defaults.
func (c Config) WithDefaults() Config {
	if c.SendsPerSecond == 0 {
		c.SendsPerSecond = DefaultSendsPerSecond
	}
	if c.SendBurst == 0 {
		c.SendBurst = DefaultSendBurst
	}
	if c.UploadBytesPerMinute == 0 {
		c.UploadBytesPerMinute = DefaultUploadBytesPerMin
	}
	return c
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var problems []error
	if c.SendsPerSecond < 0 || c.SendBurst < 0 {
		problems = append(problems, errors.New("--limit-sends-per-second and --limit-send-burst must not be negative"))
	}
	if c.UploadBytesPerMinute < 0 {
		problems = append(problems, errors.New("--limit-upload-bytes-per-minute must not be negative"))
	}
	return errors.Join(problems...)
}

// Metrics counts refusals by limit; register it on a Prometheus registry.
type Metrics struct {
	refused *prometheus.CounterVec
}

// NewMetrics returns the refusal counter clinicchat_limit_refusals_total.
func NewMetrics() *Metrics {
	return &Metrics{refused: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "clinicchat_limit_refusals_total",
		Help: "Calls refused because an identity passed a per-identity limit, by limit.",
	}, []string{"limit"})}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) { m.refused.Describe(ch) }

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) { m.refused.Collect(ch) }

// Refused counts one refusal of limit (m may be nil).
func (m *Metrics) Refused(limit string) {
	if m != nil {
		m.refused.WithLabelValues(limit).Inc()
	}
}

// Limiter is a token bucket per key.
type Limiter struct {
	name    string
	limit   rate.Limit
	burst   int
	metrics *Metrics
	now     func() time.Time

	mu      sync.Mutex
	buckets map[string]*rate.Limiter
}

// New returns a limiter of perSecond tokens per second with room for burst,
// per key. name is the limit's name in errors and metrics.
func New(name string, perSecond float64, burst int, m *Metrics) *Limiter {
	return &Limiter{name: name, limit: rate.Limit(perSecond), burst: burst, metrics: m, now: time.Now,
		buckets: make(map[string]*rate.Limiter)}
}

// Take takes n tokens from key's bucket. When they are not there it takes
// none and returns how long until they would be.
func (l *Limiter) Take(key string, n int) (bool, time.Duration) { return take(l, key, n) }

// take is Take of a key given as a string or as bytes: bytes are made a
// string only for a new bucket (a map lookup by string(key) copies
// nothing).
func take[K string | []byte](l *Limiter, key K, n int) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	b, ok := l.buckets[string(key)]
	if !ok {
		if len(l.buckets) >= maxKeys {
			l.forget(now)
		}
		b = rate.NewLimiter(l.limit, l.burst)
		l.buckets[string(key)] = b
	}
	l.mu.Unlock()
	if n > l.burst {
		// More than the bucket holds: wait for a full bucket.
		return false, l.fill()
	}
	r := b.ReserveN(now, n)
	if !r.OK() {
		return false, l.fill()
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// fill is how long an empty bucket takes to fill.
func (l *Limiter) fill() time.Duration {
	if l.limit <= 0 {
		return time.Hour
	}
	return time.Duration(float64(l.burst) / float64(l.limit) * float64(time.Second))
}

// forget drops buckets that are full again (their identity has been idle);
// if none is, it drops one at random, so memory stays bounded. Callers hold mu.
func (l *Limiter) forget(now time.Time) {
	for k, b := range l.buckets {
		if b.TokensAt(now) >= float64(l.burst) {
			delete(l.buckets, k)
		}
	}
	for k := range l.buckets {
		if len(l.buckets) < maxKeys {
			break
		}
		delete(l.buckets, k)
	}
}

// Allow takes n tokens for the caller of ctx, or returns RESOURCE_EXHAUSTED
// with the time to wait (and counts the refusal). A context without a
// verified caller is not limited here (it is refused elsewhere).
func (l *Limiter) Allow(ctx context.Context, n int, msg string) error {
	who, ok := auth.FromContext(ctx)
	if !ok {
		return nil
	}
	var buf [128]byte // the key without a string of its own (take)
	if ok, wait := take(l, appendKey(buf[:0], who), n); !ok {
		l.metrics.Refused(l.name)
		return errs.ResourceExhausted(l.name, roundUp(wait), "%s", msg)
	}
	return nil
}

// Key identifies an identity across practices.
func Key(who auth.Identity) string { return string(appendKey(nil, who)) }

// appendKey appends Key(who) to b.
func appendKey(b []byte, who auth.Identity) []byte {
	b = append(b, who.Practice...)
	b = append(b, 0)
	return who.AppendPrincipal(b)
}

// roundUp rounds a wait up to whole seconds (Retry-After's unit).
func roundUp(d time.Duration) time.Duration {
	return max(time.Second, (d+time.Second-1)/time.Second*time.Second)
}

// Interceptors applies cfg's limits to their methods.
type Interceptors struct {
	sends  *Limiter
	upload *Limiter
}

// NewInterceptors builds the limiters of cfg (zero fields: defaults); m
// counts refusals and may be nil.
func NewInterceptors(cfg Config, m *Metrics) *Interceptors {
	cfg = cfg.WithDefaults()
	perSec := float64(cfg.UploadBytesPerMinute) / 60
	return &Interceptors{
		sends:  New(LimitSends, cfg.SendsPerSecond, cfg.SendBurst, m),
		upload: New(LimitUploadBytes, perSec, int(cfg.UploadBytesPerMinute), m),
	}
}

// ServerOptions are the interceptors as options of grpc.NewServer; they must
// run after authentication (grpcx.NewServer puts its own first).
func (i *Interceptors) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(i.Unary), grpc.ChainStreamInterceptor(i.Stream)}
}

// Unary limits message sends.
func (i *Interceptors) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if info.FullMethod == MethodCreateMessage {
		if err := i.sends.Allow(ctx, 1, "You are sending messages faster than the practice allows; wait a moment and try again"); err != nil {
			return nil, err
		}
	}
	return handler(ctx, req)
}

// Stream limits upload bytes: each chunk received is taken from the
// caller's bucket, and the upload ends at the first chunk over it.
func (i *Interceptors) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if info.FullMethod == MethodUploadAttachment {
		ss = &countingStream{ServerStream: ss, l: i.upload}
	}
	return handler(srv, ss)
}

type countingStream struct {
	grpc.ServerStream
	l *Limiter
}

func (s *countingStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if c, ok := m.(interface{ GetChunk() []byte }); ok && len(c.GetChunk()) > 0 {
		return s.l.Allow(s.Context(), len(c.GetChunk()),
			"You have uploaded more than the practice allows in a minute; wait a moment and try again")
	}
	return nil
}
