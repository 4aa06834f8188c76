// Package domain holds the preferences service's model: a practice's patient
// directory entry, the chat-eligibility rule, name folding for search, the
// repository port and the errors the service answers with.
package domain

import (
	"time"
)

// Patient is one entry of a practice's patient directory, with the patient's
// own chat opt-in. DisplayName and DateOfBirth are PHI.
type Patient struct {
	// Practice is the tenant.
	Practice string
	// ID is the patient's portal subject: the {patient} of "patients/{patient}".
	ID string
	// ExternalID is the patient's id in the practice management system,
	// unique per practice.
	ExternalID string
	// DisplayName is the name shown to staff. PHI.
	DisplayName string
	// DateOfBirth is YYYY-MM-DD. PHI.
	DateOfBirth string
	// HasPortalAccount says whether the patient has a patient portal account.
	HasPortalAccount bool
	// ChatOptIn is the patient's own choice; false until they turn it on.
	ChatOptIn bool
	// UpdateTime is when the directory entry last changed.
	UpdateTime time.Time
	// PrefsUpdateTime is when the patient last changed their preferences
	// (zero: never).
	PrefsUpdateTime time.Time
}

// IneligibleReason says why staff cannot chat with a patient.
type IneligibleReason int

const (
	// Eligible: nothing stands in the way.
	Eligible IneligibleReason = iota
	// NoPortalAccount: the patient has no portal account (offer SMS instead).
	NoPortalAccount
	// ChatOptedOut: the patient has not opted in to chat, or opted out.
	ChatOptedOut
)

// Eligibility reports whether staff may chat with p now, and if not, why. A
// missing portal account is reported before the opt-in.
func (p *Patient) Eligibility() (bool, IneligibleReason) {
	switch {
	case !p.HasPortalAccount:
		return false, NoPortalAccount
	case !p.ChatOptIn:
		return false, ChatOptedOut
	}
	return true, Eligible
}

// SameDirectoryEntry reports whether p and q hold the same directory data (what
// an upsert sets), so an upsert that changes nothing can be recognised.
func (p *Patient) SameDirectoryEntry(q *Patient) bool {
	return p.ExternalID == q.ExternalID && p.DisplayName == q.DisplayName &&
		p.DateOfBirth == q.DateOfBirth && p.HasPortalAccount == q.HasPortalAccount
}
