package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// ErrInvalidToken is returned for any token that does not verify. The reason
// stays in logs only.
var ErrInvalidToken = errors.New("invalid bearer token")

// Verifier checks a bearer token and returns the identity in it.
type Verifier interface {
	Verify(ctx context.Context, token string) (Identity, error)
}

// Claims are clinicchat's JWT claims.
type Claims struct {
	jwt.RegisteredClaims
	Practice string `json:"practice"`
	Role     string `json:"role"`
	Name     string `json:"name,omitempty"`
	AuthTime int64  `json:"auth_time"`
}

func identityFrom(c *Claims, raw string) (Identity, error) {
	if c.Subject == "" || c.Practice == "" || !KnownRole(c.Role) {
		return Identity{}, fmt.Errorf("%w: sub, practice and a known role are required", ErrInvalidToken)
	}
	if strings.ContainsAny(c.Subject, "/ ") {
		return Identity{}, fmt.Errorf("%w: sub has a slash or space", ErrInvalidToken)
	}
	id := Identity{Subject: c.Subject, Practice: c.Practice, Role: c.Role, Name: c.Name, Token: raw}
	if c.AuthTime > 0 {
		id.AuthTime = time.Unix(c.AuthTime, 0).UTC()
	}
	if c.ExpiresAt != nil {
		id.Expiry = c.ExpiresAt.Time
	}
	return id, nil
}

// HMACVerifier verifies HS256 tokens made by DevIssuer (dev mode only).
type HMACVerifier struct {
	Key    []byte
	Issuer string
}

// Verify implements Verifier.
func (v HMACVerifier) Verify(_ context.Context, token string) (Identity, error) {
	var c Claims
	_, err := jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return v.Key, nil },
		jwt.WithValidMethods([]string{"HS256"}), jwt.WithIssuer(v.Issuer), jwt.WithExpirationRequired())
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	return identityFrom(&c, token)
}

// DevIssuer makes HS256 tokens for the all-in-one's dev mode.
type DevIssuer struct {
	Key    []byte
	Issuer string
	TTL    time.Duration
	Now    func() time.Time
}

// Issue signs a token for subject with role in practice; authAge puts
// auth_time that far in the past (exp does not depend on it).
func (d DevIssuer) Issue(subject, role, practice, name string, authAge time.Duration) (string, error) {
	now := time.Now()
	if d.Now != nil {
		now = d.Now()
	}
	ttl := d.TTL
	if ttl == 0 {
		ttl = 12 * time.Hour
	}
	c := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   subject,
			Issuer:    d.Issuer,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
		Practice: practice,
		Role:     role,
		Name:     name,
		AuthTime: now.Add(-authAge).Unix(),
	}
	if _, err := identityFrom(&c, ""); err != nil {
		return "", err
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(d.Key)
}

// JWKSVerifier verifies RS256/ES256 tokens against keys served at a JWKS URL,
// with issuer and audience pinned. Keys are cached and refetched when a token
// names an unknown kid (at most once per MinRefresh).
type JWKSVerifier struct {
	URL        string
	Issuer     string
	Audience   string
	Client     *http.Client
	MinRefresh time.Duration

	mu      sync.Mutex
	keys    map[string]crypto.PublicKey
	fetched time.Time
}

// Verify implements Verifier.
func (v *JWKSVerifier) Verify(ctx context.Context, token string) (Identity, error) {
	var c Claims
	opts := []jwt.ParserOption{jwt.WithValidMethods([]string{"RS256", "ES256"}), jwt.WithExpirationRequired(), jwt.WithIssuer(v.Issuer)}
	if v.Audience != "" {
		opts = append(opts, jwt.WithAudience(v.Audience))
	}
	_, err := jwt.ParseWithClaims(token, &c, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		return v.key(ctx, kid)
	}, opts...)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	return identityFrom(&c, token)
}

func (v *JWKSVerifier) key(ctx context.Context, kid string) (crypto.PublicKey, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if k, ok := v.keys[kid]; ok {
		return k, nil
	}
	min := v.MinRefresh
	if min == 0 {
		min = 30 * time.Second
	}
	if v.keys != nil && time.Since(v.fetched) < min {
		return nil, fmt.Errorf("unknown key id %q", kid)
	}
	keys, err := fetchJWKS(ctx, v.Client, v.URL)
	v.fetched = time.Now()
	if err != nil {
		return nil, err
	}
	v.keys = keys
	if k, ok := keys[kid]; ok {
		return k, nil
	}
	return nil, fmt.Errorf("unknown key id %q", kid)
}

type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

func fetchJWKS(ctx context.Context, client *http.Client, url string) (map[string]crypto.PublicKey, error) {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch jwks: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch jwks: status %d", resp.StatusCode)
	}
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 1<<20)).Decode(&set); err != nil {
		return nil, fmt.Errorf("decode jwks: %w", err)
	}
	out := map[string]crypto.PublicKey{}
	for _, k := range set.Keys {
		pk, err := k.publicKey()
		if err != nil {
			continue // keys of kinds we do not accept are skipped
		}
		out[k.Kid] = pk
	}
	return out, nil
}

func b64int(s string) (*big.Int, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, err
	}
	return new(big.Int).SetBytes(b), nil
}

func (k jwk) publicKey() (crypto.PublicKey, error) {
	switch k.Kty {
	case "RSA":
		n, err := b64int(k.N)
		if err != nil {
			return nil, err
		}
		e, err := b64int(k.E)
		if err != nil {
			return nil, err
		}
		return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
	case "EC":
		if k.Crv != "P-256" {
			return nil, fmt.Errorf("curve %s", k.Crv)
		}
		x, err := b64int(k.X)
		if err != nil {
			return nil, err
		}
		y, err := b64int(k.Y)
		if err != nil {
			return nil, err
		}
		return &ecdsa.PublicKey{Curve: elliptic.P256(), X: x, Y: y}, nil
	}
	return nil, fmt.Errorf("kty %s", k.Kty)
}

// DevIssuerName is the iss claim of dev-mode tokens.
const DevIssuerName = "clinicchat-dev"
