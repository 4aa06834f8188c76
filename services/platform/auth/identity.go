// Package auth verifies bearer tokens (JWT) and carries the caller's identity
// through a request. Every service verifies the token itself: the gateway
// forwards the caller's token in the "authorization" metadata and no service
// trusts that someone else checked it.
package auth

import (
	"context"
	"time"
)

// Roles (the JWT "role" claim).
const (
	RoleDentist       = "dentist"
	RoleHygienist     = "hygienist"
	RoleAssistant     = "assistant"
	RoleFrontDesk     = "front_desk"
	RolePracticeAdmin = "practice_admin"
	RolePatient       = "patient"
	RoleSystem        = "system"
)

// KnownRole reports whether r is one of the roles above.
func KnownRole(r string) bool {
	switch r {
	case RoleDentist, RoleHygienist, RoleAssistant, RoleFrontDesk, RolePracticeAdmin, RolePatient, RoleSystem:
		return true
	}
	return false
}

// Identity is a verified caller.
type Identity struct {
	Subject  string
	Practice string
	Role     string
	Name     string
	AuthTime time.Time
	Expiry   time.Time
	// Token is the raw bearer token, forwarded on calls to other services.
	Token string
}

// IsStaff reports a clinical, front-desk or admin role: someone who may chat.
func (id Identity) IsStaff() bool {
	switch id.Role {
	case RoleDentist, RoleHygienist, RoleAssistant, RoleFrontDesk, RolePracticeAdmin:
		return true
	}
	return false
}

// IsPatient reports the patient role.
func (id Identity) IsPatient() bool { return id.Role == RolePatient }

// IsSystem reports another practice system.
func (id Identity) IsSystem() bool { return id.Role == RoleSystem }

// principalPrefix is the collection of the caller's resource name: "patients/"
// for a patient, "users/" for everyone else.
func (id Identity) principalPrefix() string {
	if id.IsPatient() {
		return "patients/"
	}
	return "users/"
}

// Principal is the caller as a resource name: "patients/{sub}" for a patient,
// "users/{sub}" for everyone else.
func (id Identity) Principal() string { return id.principalPrefix() + id.Subject }

// IsPrincipal reports whether name is id.Principal(), without making it.
func (id Identity) IsPrincipal(name string) bool {
	prefix := id.principalPrefix()
	return len(name) == len(prefix)+len(id.Subject) && name[:len(prefix)] == prefix && name[len(prefix):] == id.Subject
}

// AppendPrincipal appends id.Principal() to b.
func (id Identity) AppendPrincipal(b []byte) []byte {
	return append(append(b, id.principalPrefix()...), id.Subject...)
}

// SteppedUp reports whether the caller authenticated within window of now.
func (id Identity) SteppedUp(now time.Time, window time.Duration) bool {
	return !id.AuthTime.IsZero() && now.Sub(id.AuthTime) <= window
}

type ctxKey struct{}

// WithIdentity returns ctx carrying id.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the verified caller, if any.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}
