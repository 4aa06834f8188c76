package auth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/services/platform/auth"
)

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func claims(iss, aud string, exp time.Time) auth.Claims {
	return auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{Subject: "dr-lee", Issuer: iss, Audience: jwt.ClaimStrings{aud}, ExpiresAt: jwt.NewNumericDate(exp)},
		Practice:         "demo", Role: "dentist", AuthTime: time.Now().Add(-time.Minute).Unix(),
	}
}

func TestJWKSVerifierPinsIssuerAudienceExpiryAndAlgorithm(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]string{
			{"kty": "RSA", "kid": "r1", "n": b64(rsaKey.N.Bytes()), "e": b64(big.NewInt(int64(rsaKey.E)).Bytes())},
			{"kty": "EC", "kid": "e1", "crv": "P-256", "x": b64(ecKey.X.FillBytes(make([]byte, 32))), "y": b64(ecKey.Y.FillBytes(make([]byte, 32)))},
		}})
	}))
	defer srv.Close()
	v := &auth.JWKSVerifier{URL: srv.URL, Issuer: "https://idp.example", Audience: "clinicchat"}
	sign := func(m jwt.SigningMethod, kid string, key any, c auth.Claims) string {
		tok := jwt.NewWithClaims(m, c)
		tok.Header["kid"] = kid
		s, err := tok.SignedString(key)
		require.NoError(t, err)
		return s
	}
	good := claims("https://idp.example", "clinicchat", time.Now().Add(time.Hour))
	ctx := context.Background()

	id, err := v.Verify(ctx, sign(jwt.SigningMethodRS256, "r1", rsaKey, good))
	require.NoError(t, err)
	require.Equal(t, "dr-lee", id.Subject)
	require.Equal(t, "demo", id.Practice)
	require.True(t, id.IsStaff())
	_, err = v.Verify(ctx, sign(jwt.SigningMethodES256, "e1", ecKey, good))
	require.NoError(t, err)
	require.EqualValues(t, 1, fetches.Load(), "keys are cached")

	cases := map[string]string{
		"wrong issuer":                        sign(jwt.SigningMethodRS256, "r1", rsaKey, claims("https://evil.example", "clinicchat", time.Now().Add(time.Hour))),
		"wrong audience":                      sign(jwt.SigningMethodRS256, "r1", rsaKey, claims("https://idp.example", "other", time.Now().Add(time.Hour))),
		"expired":                             sign(jwt.SigningMethodRS256, "r1", rsaKey, claims("https://idp.example", "clinicchat", time.Now().Add(-time.Minute))),
		"HS256 with the public key as secret": sign(jwt.SigningMethodHS256, "r1", rsaKey.N.Bytes(), good),
		"unknown key id":                      sign(jwt.SigningMethodRS256, "nope", rsaKey, good),
		"none algorithm":                      sign(jwt.SigningMethodNone, "r1", jwt.UnsafeAllowNoneSignatureType, good),
	}
	for name, tok := range cases {
		_, err := v.Verify(ctx, tok)
		require.ErrorIs(t, err, auth.ErrInvalidToken, name)
	}
	noRole := good
	noRole.Role = "janitor"
	_, err = v.Verify(ctx, sign(jwt.SigningMethodRS256, "r1", rsaKey, noRole))
	require.ErrorIs(t, err, auth.ErrInvalidToken, "unknown role")
}

func TestDevIssuerTokensCarryAuthAgeNotExpiry(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	iss := auth.DevIssuer{Key: key, Issuer: auth.DevIssuerName, Now: func() time.Time { return now }}
	tok, err := iss.Issue("alice", "patient", "demo", "Alice", 10*time.Minute)
	require.NoError(t, err)
	var c auth.Claims
	_, _, err = jwt.NewParser().ParseUnverified(tok, &c)
	require.NoError(t, err)
	require.Equal(t, now.Add(-10*time.Minute).Unix(), c.AuthTime)
	require.Equal(t, now.Add(12*time.Hour).Unix(), c.ExpiresAt.Unix(), "exp does not depend on auth age")
	_, err = iss.Issue("alice", "wizard", "demo", "", 0)
	require.Error(t, err)
}

type countingVerifier struct {
	calls int
	id    auth.Identity
}

func (c *countingVerifier) Verify(context.Context, string) (auth.Identity, error) {
	c.calls++
	if c.id.Subject == "" {
		return auth.Identity{}, auth.ErrInvalidToken
	}
	return c.id, nil
}

func TestCachingVerifierKeepsAcceptedTokensUntilExpiry(t *testing.T) {
	inner := &countingVerifier{id: auth.Identity{Subject: "u", Expiry: time.Now().Add(50 * time.Millisecond)}}
	v := auth.NewCachingVerifier(inner, 2)
	for range 3 {
		_, err := v.Verify(context.Background(), "t1")
		require.NoError(t, err)
	}
	require.Equal(t, 1, inner.calls, "verified once")
	require.Eventually(t, func() bool {
		_, _ = v.Verify(context.Background(), "t1")
		return inner.calls > 1
	}, 5*time.Second, 5*time.Millisecond, "an expired token is checked again")

	bad := &countingVerifier{}
	vb := auth.NewCachingVerifier(bad, 2)
	for range 2 {
		_, err := vb.Verify(context.Background(), "nope")
		require.ErrorIs(t, err, auth.ErrInvalidToken)
	}
	require.Equal(t, 2, bad.calls, "refusals are not cached")
}
