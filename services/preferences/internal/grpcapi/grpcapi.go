// Package grpcapi is the preferences service's gRPC surface: it turns
// requests into use-case calls (resource names into ids) and domain values
// into protos. Errors are typed (platform/errs); the server's interceptor
// maps them to status with ErrorInfo.
package grpcapi

import (
	"context"
	"strings"

	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/ids"
	"github.com/clinicchat/clinicchat/services/preferences/internal/app"
)

// Server implements preferencesv1.PreferencesServiceServer.
type Server struct {
	preferencesv1.UnimplementedPreferencesServiceServer
	app *app.App
}

// New returns the gRPC server of a.
func New(a *app.App) *Server { return &Server{app: a} }

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
	out, err := s.app.UpsertPatient(ctx, in)
	if err != nil {
		return nil, err
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
	return app.PreferencesProto(out), nil
}
