package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
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

// DevIssuerName is the iss claim of dev-mode tokens.
const DevIssuerName = "clinicchat-dev"
