package domain

import (
	"google.golang.org/grpc/codes"

	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// ReasonExternalIDInUse is the ErrorInfo reason of an upsert that would give a
// patient an external id another patient of the practice already has.
const ReasonExternalIDInUse = "EXTERNAL_ID_IN_USE"

// Errors the service answers with. Messages are for the person at the screen
// and never carry PHI.
var (
	// ErrPatientNotFound: no such patient in the caller's practice, or one the
	// caller may not see (tenancy: never say which).
	ErrPatientNotFound = errs.NotFound("Patient not found")
	// ErrExternalIDInUse: the external id belongs to another patient.
	ErrExternalIDInUse = &errs.Error{Code: codes.AlreadyExists, Reason: ReasonExternalIDInUse,
		Msg: "Another patient of this practice already has this external id"}
	// ErrBadPageToken: the page token is malformed or from another search.
	ErrBadPageToken = errs.InvalidArgument("The page token does not belong to this search; search again without it")
)
