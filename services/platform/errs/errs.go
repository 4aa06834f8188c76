// Package errs holds clinicchat's typed errors: a gRPC code, a SPEC.md reason
// and a message written for the person at the screen. Domain packages declare
// their errors with these constructors; the server interceptor turns them into
// a google.rpc.Status with ErrorInfo{reason, domain "clinicchat"} (AIP-193) and
// masks every other error as INTERNAL with an error id.
package errs

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Domain is the ErrorInfo domain of every clinicchat error.
const Domain = "clinicchat"

// Reasons shared across services (SPEC.md). Services may add their own.
const (
	ReasonInvalidArgument    = "INVALID_ARGUMENT"
	ReasonNotFound           = "NOT_FOUND"
	ReasonPermissionDenied   = "PERMISSION_DENIED"
	ReasonUnauthenticated    = "UNAUTHENTICATED"
	ReasonNoPortalAccount    = "NO_PORTAL_ACCOUNT"
	ReasonChatOptedOut       = "CHAT_OPTED_OUT"
	ReasonRequestIDReused    = "REQUEST_ID_REUSED"
	ReasonAttachmentTooLarge = "ATTACHMENT_TOO_LARGE"
	ReasonUnsupportedType    = "UNSUPPORTED_FILE_TYPE"
	ReasonStepUpRequired     = "STEP_UP_REQUIRED"
	// ReasonResourceExhausted: a per-identity limit (ErrorInfo metadata
	// "limit" names which); the status carries a google.rpc.RetryInfo.
	ReasonResourceExhausted = "RESOURCE_EXHAUSTED"
)

// MetaLimit is the ErrorInfo metadata key naming the limit a
// RESOURCE_EXHAUSTED error is about ("sends", "upload_bytes"...).
const MetaLimit = "limit"

// Error is a typed, user-presentable error. Msg must never carry PHI.
type Error struct {
	Code   codes.Code
	Reason string
	Msg    string
	// Meta is copied into ErrorInfo.metadata (ids only).
	Meta map[string]string
	// RetryAfter, when positive, becomes a google.rpc.RetryInfo detail (and
	// the edge's Retry-After header).
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Msg }

// Is makes errors.Is match on code and reason, so a sentinel with a more
// specific message still matches.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && t.Reason == e.Reason
}

// GRPCStatus lets status.FromError and status.Code see the status directly.
func (e *Error) GRPCStatus() *status.Status {
	st := status.New(e.Code, e.Msg)
	if e.Reason == "" {
		return st
	}
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: e.Reason, Domain: Domain, Metadata: e.Meta}}
	if e.RetryAfter > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(e.RetryAfter)})
	}
	withInfo, err := st.WithDetails(details...)
	if err != nil {
		return st
	}
	return withInfo
}

// ResourceExhausted is a 429: the caller passed a per-identity limit (named
// by limit) and may try again after retryAfter.
func ResourceExhausted(limit string, retryAfter time.Duration, format string, args ...any) *Error {
	e := newErr(codes.ResourceExhausted, ReasonResourceExhausted, format, args...)
	e.Meta = map[string]string{MetaLimit: limit}
	e.RetryAfter = retryAfter
	return e
}

// RetryAfter returns the RetryInfo delay of err (a typed error or a status
// error), or 0.
func RetryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	st, ok := status.FromError(err)
	if !ok {
		return 0
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

func newErr(c codes.Code, reason, format string, args ...any) *Error {
	return &Error{Code: c, Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

// InvalidArgument is a 400 with reason INVALID_ARGUMENT unless reason is given.
func InvalidArgument(format string, args ...any) *Error {
	return newErr(codes.InvalidArgument, ReasonInvalidArgument, format, args...)
}

// NotFound is a 404. Resources of another practice or patient answer this too.
func NotFound(format string, args ...any) *Error {
	return newErr(codes.NotFound, ReasonNotFound, format, args...)
}

// PermissionDenied is a 403.
func PermissionDenied(format string, args ...any) *Error {
	return newErr(codes.PermissionDenied, ReasonPermissionDenied, format, args...)
}

// Unauthenticated is a 401.
func Unauthenticated(format string, args ...any) *Error {
	return newErr(codes.Unauthenticated, ReasonUnauthenticated, format, args...)
}

// FailedPrecondition is a 400 with a specific reason.
func FailedPrecondition(reason, format string, args ...any) *Error {
	return newErr(codes.FailedPrecondition, reason, format, args...)
}

// WithReason returns a copy of e with another reason.
func (e *Error) WithReason(reason string) *Error {
	c := *e
	c.Reason = reason
	return &c
}

// Reason returns the ErrorInfo reason of err (a typed error or a status error
// received over gRPC), or "".
func Reason(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// FromStatus rebuilds a typed error from a gRPC status error received from
// another service, so it can be returned unchanged to our own caller.
// Non-status errors are returned as they are.
func FromStatus(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Unknown, codes.Internal, codes.DataLoss:
		return err
	}
	out := &Error{Code: st.Code(), Msg: st.Message()}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			out.Reason = d.GetReason()
			out.Meta = d.GetMetadata()
		case *errdetails.RetryInfo:
			out.RetryAfter = d.GetRetryDelay().AsDuration()
		}
	}
	return out
}
