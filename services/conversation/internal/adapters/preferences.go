// Package adapters implements the conversation service's ports over gRPC.
package adapters

import (
	"context"

	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/conversation/internal/app"
	"github.com/clinicchat/clinicchat/services/platform/errs"
)

// Patients is the patient directory of the preferences service.
type Patients struct {
	Client preferencesv1.PreferencesServiceClient
}

// GetPatient implements app.PatientDirectory, as the caller.
func (p Patients) GetPatient(ctx context.Context, id string) (app.Patient, error) {
	pat, err := p.Client.GetPatient(ctx, &preferencesv1.GetPatientRequest{Name: "patients/" + id})
	if err != nil {
		return app.Patient{}, errs.FromStatus(err)
	}
	return app.Patient{ID: id, DisplayName: pat.GetDisplayName(), HasPortalAccount: pat.GetHasPortalAccount()}, nil
}
