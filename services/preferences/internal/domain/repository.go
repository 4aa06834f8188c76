package domain

import (
	"context"

	"github.com/clinicchat/clinicchat/services/platform/eventtype"
)

// Event is an event to publish through the outbox, in the same transaction as
// the change it describes.
type Event = eventtype.Event

// Mutation computes the next state of a patient from its current state
// (nil when there is none) inside the repository's transaction. It returns
// the patient to store and the events to publish with it, or a nil patient
// when nothing changes (nothing is written, no event published). It may run
// more than once (a retried transaction) and must have no other side effects.
type Mutation func(current *Patient) (next *Patient, events []Event, err error)

// PatientKey says which patient an upsert is about.
type PatientKey struct {
	// ID, when set, names the patient ("patients/{ID}").
	ID string
	// ExternalID is used to find the patient when ID is empty.
	ExternalID string
}

// Repository is the patient directory's storage port. Every method is scoped
// to one practice; a patient of another practice does not exist for it.
// Reads see every write that has returned (a cache, if any, is exact).
type Repository interface {
	// UpsertPatient finds the patient by key in practice and stores what
	// mutate returns, with its events, in one transaction. It fails with
	// ErrExternalIDInUse when the stored patient's external id belongs to
	// another patient.
	UpsertPatient(ctx context.Context, practice string, key PatientKey, mutate Mutation) (*Patient, error)
	// UpdatePatient applies mutate to an existing patient (ErrPatientNotFound
	// if there is none) and stores the result with its events.
	UpdatePatient(ctx context.Context, practice, id string, mutate Mutation) (*Patient, error)
	// GetPatient returns one patient or ErrPatientNotFound.
	GetPatient(ctx context.Context, practice, id string) (*Patient, error)
	// SearchPatients returns up to q.Limit patients matching q, in result
	// order (SearchQuery), after q.After.
	SearchPatients(ctx context.Context, q SearchQuery) ([]SearchHit, error)
	// RecordEvents writes events that go with no change (refused attempts)
	// to the outbox.
	RecordEvents(ctx context.Context, events ...Event) error
}
