package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// JWKSConfig configures a JWKSVerifier.
type JWKSConfig struct {
	// URL is the issuer's JWKS URL.
	URL string
	// Issuer and Audience are the required iss and aud claims (both required).
	Issuer   string
	Audience string
	// Client fetches the key set (default: a client with a 10 s timeout).
	Client *http.Client
	// RefreshInterval is how often the key set is refetched in the
	// background (default 1h).
	RefreshInterval time.Duration
	// UnknownKIDInterval is the least time between two refetches caused by
	// a token naming a key id the set does not have (default 1m, at least
	// 2s). A token
	// with an unknown kid beyond that rate is refused at once, without a
	// fetch and without waiting.
	UnknownKIDInterval time.Duration
}

// Validate reports every problem at once.
func (c JWKSConfig) Validate() error {
	var problems []error
	if c.URL == "" {
		problems = append(problems, errors.New("a JWKS URL is required"))
	}
	if c.Issuer == "" {
		problems = append(problems, errors.New("a required issuer (iss) is required"))
	}
	if c.Audience == "" {
		problems = append(problems, errors.New("a required audience (aud) is required"))
	}
	return errors.Join(problems...)
}

// JWKSVerifier verifies RS256/ES256 tokens against the keys an issuer
// publishes at a JWKS URL, with issuer, audience and expiry required. Keys
// come from github.com/MicahParks/keyfunc: refreshed in the background, and
// refetched on an unknown kid at most once per UnknownKIDInterval. No lock is
// held across a fetch.
type JWKSVerifier struct {
	cfg    JWKSConfig
	kf     keyfunc.Keyfunc
	cancel context.CancelFunc
	opts   []jwt.ParserOption
}

// NewJWKSVerifier starts the key set's background refresh (Close stops it).
// The first fetch happens here; when it fails the verifier still starts and
// the next unknown kid (rate limited) or background refresh tries again.
func NewJWKSVerifier(cfg JWKSConfig) (*JWKSVerifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = time.Hour
	}
	if cfg.UnknownKIDInterval <= 0 {
		cfg.UnknownKIDInterval = time.Minute
	}
	cfg.UnknownKIDInterval = max(cfg.UnknownKIDInterval, 2*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.URL}, keyfunc.Override{
		Client:          cfg.Client,
		HTTPTimeout:     cfg.Client.Timeout,
		RefreshInterval: cfg.RefreshInterval,
		// One refetch per interval for unknown kids. A token that would
		// have to wait longer than a second for the limiter is refused at
		// once (rate.Limiter.Wait fails fast when the wait exceeds the
		// deadline); the second leaves room for a busy scheduler.
		RefreshUnknownKID:       rate.NewLimiter(rate.Every(cfg.UnknownKIDInterval), 1),
		RateLimitWaitMax:        time.Second,
		RefreshErrorHandlerFunc: func(string) func(context.Context, error) { return func(context.Context, error) {} },
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("jwks: %w", err)
	}
	return &JWKSVerifier{cfg: cfg, kf: kf, cancel: cancel, opts: []jwt.ParserOption{
		jwt.WithValidMethods([]string{"RS256", "ES256"}), jwt.WithExpirationRequired(),
		jwt.WithIssuer(cfg.Issuer), jwt.WithAudience(cfg.Audience),
	}}, nil
}

// Verify implements Verifier.
func (v *JWKSVerifier) Verify(ctx context.Context, token string) (Identity, error) {
	var c Claims
	if _, err := jwt.ParseWithClaims(token, &c, v.kf.KeyfuncCtx(ctx), v.opts...); err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	return identityFrom(&c, token)
}

// Close stops the background refresh.
func (v *JWKSVerifier) Close() { v.cancel() }
