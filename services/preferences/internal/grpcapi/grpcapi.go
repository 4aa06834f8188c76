// Package grpcapi is the preferences service's gRPC surface: it turns
// requests into use-case calls (resource names into ids) and domain values
// into protos. Errors are typed (platform/errs); the server's interceptor
// maps them to status with ErrorInfo.
package grpcapi

import (
	"context"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/preferences/internal/app"
)

// Server implements preferencesv1.PreferencesServiceServer.
type Server struct {
	preferencesv1.UnimplementedPreferencesServiceServer
	app *app.App
	// lease is how long a caller may keep a GetPatient answer (zero: not
	// at all); every patient write returns that long after its commit.
	lease       time.Duration
	leaseHeader metadata.MD
}

// New returns the gRPC server of a. With a lease, GetPatient announces it
// in its response header (grpcx.ReadLeaseHeader) and UpsertPatient and
// UpdateCommunicationPreferences return only lease after their commit (see
// preferences.Config.ReadLease).
func New(a *app.App, lease time.Duration) *Server {
	s := &Server{app: a, lease: lease}
	if lease > 0 {
		s.leaseHeader = metadata.Pairs(grpcx.ReadLeaseHeader, strconv.FormatInt(lease.Microseconds(), 10))
	}
	return s
}

// clockSlack covers the difference between replicas' clocks when outlast
// judges, from a stored change time, whether a lease may still be running.
const clockSlack = time.Second

// outlast waits out the read lease after a committed write, so that no
// caller still holds an answer read before it when it is acknowledged. A
// caller that gives up meanwhile gets its context's error: the write is
// committed all the same (every write here is idempotent to retry).
// changed is when what the write is about last changed (by this write or
// another): when that is longer ago than the lease (plus clockSlack), every
// answer read before it has run out and there is nothing to wait for, as
// for a write that changes nothing in a directory sync.
func (s *Server) outlast(ctx context.Context, changed time.Time) error {
	if s.lease <= 0 || time.Since(changed) > s.lease+clockSlack {
		return nil
	}
	t := time.NewTimer(s.lease)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// patientID parses "patients/{patient}".
func patientID(name, field string) (string, error) {
	parts, ok := ids.Parse(name, "patients")
	if !ok {
		return "", errs.InvalidArgument("%s must be patients/{patient}", field)
	}
	return parts[0], nil
}

// preferencesID parses "patients/{patient}/communicationPreferences".
func preferencesID(name, field string) (string, error) {
	rest, ok := strings.CutSuffix(name, "/communicationPreferences")
	if !ok {
		return "", errs.InvalidArgument("%s must be patients/{patient}/communicationPreferences", field)
	}
	return patientID(rest, field)
}

// UpsertPatient implements preferencesv1.PreferencesServiceServer.
func (s *Server) UpsertPatient(ctx context.Context, req *preferencesv1.UpsertPatientRequest) (*preferencesv1.Patient, error) {
	p := req.GetPatient()
	if p == nil {
		return nil, errs.InvalidArgument("patient is required")
	}
	in := app.UpsertInput{
		ExternalID:       p.GetExternalId(),
		DisplayName:      p.GetDisplayName(),
		DateOfBirth:      p.GetDateOfBirth(),
		HasPortalAccount: p.GetHasPortalAccount(),
	}
	if p.GetName() != "" {
		var err error
		if in.ID, err = patientID(p.GetName(), "patient.name"); err != nil {
			return nil, err
		}
	}
	out, created, err := s.app.UpsertPatientCreated(ctx, in)
	if err != nil {
		return nil, err
	}
	// A new patient had no answer to lease (NOT_FOUND is never kept): a
	// first import does not wait once per patient.
	if !created {
		if err := s.outlast(ctx, out.UpdateTime); err != nil {
			return nil, err
		}
	}
	return app.PatientProto(out), nil
}

// GetPatient implements preferencesv1.PreferencesServiceServer.
func (s *Server) GetPatient(ctx context.Context, req *preferencesv1.GetPatientRequest) (*preferencesv1.Patient, error) {
	id, err := patientID(req.GetName(), "name")
	if err != nil {
		return nil, err
	}
	out, err := s.app.GetPatient(ctx, id)
	if err != nil {
		return nil, err
	}
	if s.leaseHeader != nil {
		// Only a successful answer carries the lease: refusals and errors
		// are never kept.
		if err := grpc.SetHeader(ctx, s.leaseHeader); err != nil {
			return nil, err
		}
	}
	return app.PatientProto(out), nil
}

// ListPatients implements preferencesv1.PreferencesServiceServer.
func (s *Server) ListPatients(ctx context.Context, req *preferencesv1.ListPatientsRequest) (*preferencesv1.ListPatientsResponse, error) {
	hits, next, err := s.app.SearchPatients(ctx, app.SearchInput{
		Query:             req.GetQuery(),
		IncludeIneligible: req.GetIncludeIneligible(),
		PageSize:          int(req.GetPageSize()),
		PageToken:         req.GetPageToken(),
	})
	if err != nil {
		return nil, err
	}
	resp := &preferencesv1.ListPatientsResponse{Patients: make([]*preferencesv1.Patient, len(hits)), NextPageToken: next}
	for i := range hits {
		resp.Patients[i] = app.PatientProto(&hits[i].Patient)
	}
	return resp, nil
}

// GetCommunicationPreferences implements preferencesv1.PreferencesServiceServer.
func (s *Server) GetCommunicationPreferences(ctx context.Context, req *preferencesv1.GetCommunicationPreferencesRequest) (*preferencesv1.CommunicationPreferences, error) {
	id, err := preferencesID(req.GetName(), "name")
	if err != nil {
		return nil, err
	}
	out, err := s.app.GetPreferences(ctx, id)
	if err != nil {
		return nil, err
	}
	return app.PreferencesProto(out), nil
}

// UpdateCommunicationPreferences implements preferencesv1.PreferencesServiceServer.
func (s *Server) UpdateCommunicationPreferences(ctx context.Context, req *preferencesv1.UpdateCommunicationPreferencesRequest) (*preferencesv1.CommunicationPreferences, error) {
	prefs := req.GetCommunicationPreferences()
	if prefs == nil {
		return nil, errs.InvalidArgument("communication_preferences is required")
	}
	id, err := preferencesID(prefs.GetName(), "communication_preferences.name")
	if err != nil {
		return nil, err
	}
	out, err := s.app.UpdatePreferences(ctx, id, prefs.GetChatOptIn())
	if err != nil {
		return nil, err
	}
	if err := s.outlast(ctx, out.PrefsUpdateTime); err != nil {
		return nil, err
	}
	return app.PreferencesProto(out), nil
}
