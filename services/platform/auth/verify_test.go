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
	"strconv"
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

// jwksServer serves a JWKS whose keys the test swaps (key rotation) and
// counts its fetches.
type jwksServer struct {
	*httptest.Server
	keys    atomic.Value // []map[string]string
	fetches atomic.Int32
}

func newJWKSServer(t *testing.T, keys ...map[string]string) *jwksServer {
	s := &jwksServer{}
	s.keys.Store(keys)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.fetches.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": s.keys.Load()})
	}))
	t.Cleanup(s.Close)
	return s
}

func rsaJWK(kid string, k *rsa.PrivateKey) map[string]string {
	return map[string]string{"kty": "RSA", "kid": kid, "n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
}

func sign(t *testing.T, m jwt.SigningMethod, kid string, key any, c auth.Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	require.NoError(t, err)
	return s
}

func newVerifier(t *testing.T, url string, unknownKID time.Duration) *auth.JWKSVerifier {
	t.Helper()
	v, err := auth.NewJWKSVerifier(auth.JWKSConfig{URL: url, Issuer: "https://idp.example", Audience: "clinicchat", UnknownKIDInterval: unknownKID})
	require.NoError(t, err)
	t.Cleanup(v.Close)
	return v
}

func TestJWKSVerifierPinsIssuerAudienceExpiryAndAlgorithm(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	srv := newJWKSServer(t, rsaJWK("r1", rsaKey),
		map[string]string{"kty": "EC", "kid": "e1", "crv": "P-256", "x": b64(ecKey.X.FillBytes(make([]byte, 32))), "y": b64(ecKey.Y.FillBytes(make([]byte, 32)))})
	v := newVerifier(t, srv.URL, time.Hour)
	good := claims("https://idp.example", "clinicchat", time.Now().Add(time.Hour))
	ctx := context.Background()

	id, err := v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "r1", rsaKey, good))
	require.NoError(t, err)
	require.Equal(t, "dr-lee", id.Subject)
	require.Equal(t, "demo", id.Practice)
	require.True(t, id.IsStaff())
	_, err = v.Verify(ctx, sign(t, jwt.SigningMethodES256, "e1", ecKey, good))
	require.NoError(t, err)
	require.EqualValues(t, 1, srv.fetches.Load(), "keys are cached")

	noAud := good
	noAud.Audience = nil
	cases := map[string]string{
		"wrong issuer":                        sign(t, jwt.SigningMethodRS256, "r1", rsaKey, claims("https://evil.example", "clinicchat", time.Now().Add(time.Hour))),
		"wrong audience":                      sign(t, jwt.SigningMethodRS256, "r1", rsaKey, claims("https://idp.example", "other", time.Now().Add(time.Hour))),
		"no audience":                         sign(t, jwt.SigningMethodRS256, "r1", rsaKey, noAud),
		"expired":                             sign(t, jwt.SigningMethodRS256, "r1", rsaKey, claims("https://idp.example", "clinicchat", time.Now().Add(-time.Minute))),
		"HS256 with the public key as secret": sign(t, jwt.SigningMethodHS256, "r1", rsaKey.N.Bytes(), good),
		"unknown key id":                      sign(t, jwt.SigningMethodRS256, "nope", rsaKey, good),
		"none algorithm":                      sign(t, jwt.SigningMethodNone, "r1", jwt.UnsafeAllowNoneSignatureType, good),
	}
	for name, tok := range cases {
		_, err := v.Verify(ctx, tok)
		require.ErrorIs(t, err, auth.ErrInvalidToken, name)
	}
	noRole := good
	noRole.Role = "janitor"
	_, err = v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "r1", rsaKey, noRole))
	require.ErrorIs(t, err, auth.ErrInvalidToken, "unknown role")
}

func TestJWKSConfigRequiresIssuerAndAudience(t *testing.T) {
	_, err := auth.NewJWKSVerifier(auth.JWKSConfig{URL: "http://127.0.0.1:1/jwks"})
	require.ErrorContains(t, err, "issuer")
	require.ErrorContains(t, err, "audience")
}

// TestJWKSKeyRotation: the issuer publishes a new key and signs with it; the
// first token naming the new kid refetches the set and verifies, and tokens
// of the old key verify while the set still has it.
func TestJWKSKeyRotation(t *testing.T) {
	oldKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	newKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	srv := newJWKSServer(t, rsaJWK("k1", oldKey))
	v := newVerifier(t, srv.URL, time.Hour)
	good := claims("https://idp.example", "clinicchat", time.Now().Add(time.Hour))
	ctx := context.Background()

	_, err = v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "k1", oldKey, good))
	require.NoError(t, err)
	require.EqualValues(t, 1, srv.fetches.Load())

	srv.keys.Store([]map[string]string{rsaJWK("k1", oldKey), rsaJWK("k2", newKey)})
	_, err = v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "k2", newKey, good))
	require.NoError(t, err, "the rotated-in key is fetched on its first token")
	require.EqualValues(t, 2, srv.fetches.Load())
	_, err = v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "k1", oldKey, good))
	require.NoError(t, err, "the old key still verifies while published")
	require.EqualValues(t, 2, srv.fetches.Load(), "known kids fetch nothing")

	// A key id signed by the wrong key does not verify.
	_, err = v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "k2", oldKey, good))
	require.ErrorIs(t, err, auth.ErrInvalidToken)
}

// TestJWKSUnknownKidRateLimited: a flood of tokens with unknown kids causes
// one refetch per interval, not one per token, and is refused at once.
func TestJWKSUnknownKidRateLimited(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	srv := newJWKSServer(t, rsaJWK("k1", key))
	v := newVerifier(t, srv.URL, time.Hour)
	good := claims("https://idp.example", "clinicchat", time.Now().Add(time.Hour))
	ctx := context.Background()
	require.EqualValues(t, 1, srv.fetches.Load(), "the set is fetched at start")

	for i := range 20 {
		_, err := v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "forged-"+strconv.Itoa(i), key, good))
		require.ErrorIs(t, err, auth.ErrInvalidToken)
	}
	require.EqualValues(t, 2, srv.fetches.Load(), "one refetch for twenty unknown kids")
	_, err = v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "k1", key, good))
	require.NoError(t, err, "known keys keep working")
}

// TestJWKSFailedFirstFetchDoesNotRefetchPerRequest: an issuer that is down
// at start costs one fetch per unknown-kid interval, not one per request.
func TestJWKSFailedFirstFetchDoesNotRefetchPerRequest(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	v := newVerifier(t, srv.URL, time.Hour)
	good := claims("https://idp.example", "clinicchat", time.Now().Add(time.Hour))
	for range 10 {
		_, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodRS256, "k1", key, good))
		require.ErrorIs(t, err, auth.ErrInvalidToken)
	}
	require.LessOrEqual(t, fetches.Load(), int32(2))
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
