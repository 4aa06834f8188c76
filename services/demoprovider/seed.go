package demoprovider

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
)

// DemoPractice is the seeded practice id.
const DemoPractice = "demo"

// DemoStaff are the demo practice's staff: one of every role (subject → role).
var DemoStaff = []struct{ Subject, Role, Name string }{
	{"dr-lee", auth.RoleDentist, "Dr. Lee"},
	{"hana", auth.RoleHygienist, "Hana Kim"},
	{"sam", auth.RoleAssistant, "Sam Rivera"},
	{"fiona", auth.RoleFrontDesk, "Fiona Walsh"},
	{"adam", auth.RolePracticeAdmin, "Adam Novak"},
	{"pms", auth.RoleSystem, "Practice management system"},
}

// DemoPatient is a seeded patient.
type DemoPatient struct {
	ID, ExternalID, Name, DateOfBirth string
	Portal, OptIn                     bool
}

// DemoPatients cover every case of the product guide: portal and opted in,
// portal but not opted in, no portal account, accents, and two John Smiths.
var DemoPatients = []DemoPatient{
	{"alice", "PMS-1001", "Alice Johnson", "1985-03-14", true, true},
	{"jose", "PMS-1002", "José García", "1979-11-02", true, true},
	{"emma", "PMS-1003", "Emma Wilson", "1992-07-21", true, true},
	{"john-smith-1", "PMS-1004", "John Smith", "1970-01-30", true, true},
	{"john-smith-2", "PMS-1005", "John Smith", "1998-09-09", true, true},
	{"carol", "PMS-1006", "Carol Davis", "1964-05-05", true, false},
	{"dave", "PMS-1007", "David Brown", "2001-12-12", false, false},
}

// Seed fills the demo practice through the preferences service's public
// API, as its practice system (`pms`) and each patient would: the patient
// directory, then each opted-in patient's opt-in. Tokens come from issuer
// (dev mode). It does nothing when the last demo patient already exists, so
// a patient who later opts out stays opted out across restarts.
func Seed(ctx context.Context, preferences grpc.ClientConnInterface, issuer *auth.DevIssuer) (seeded bool, err error) {
	prefs := preferencesv1.NewPreferencesServiceClient(preferences)
	as := func(sub, role string) (context.Context, error) {
		tok, err := issuer.Issue(sub, role, DemoPractice, "", 0)
		if err != nil {
			return nil, err
		}
		return metadata.AppendToOutgoingContext(ctx, auth.MetadataKey, "Bearer "+tok), nil
	}
	sys, err := as("pms", auth.RoleSystem)
	if err != nil {
		return false, err
	}
	last := DemoPatients[len(DemoPatients)-1]
	if _, err := prefs.GetPatient(sys, &preferencesv1.GetPatientRequest{Name: "patients/" + last.ID}); err == nil {
		return false, nil
	} else if status.Code(err) != codes.NotFound {
		return false, fmt.Errorf("look for the demo practice: %w", err)
	}
	for _, p := range DemoPatients {
		_, err := prefs.UpsertPatient(sys, &preferencesv1.UpsertPatientRequest{Patient: &preferencesv1.Patient{
			Name: "patients/" + p.ID, ExternalId: p.ExternalID, DisplayName: p.Name, DateOfBirth: p.DateOfBirth, HasPortalAccount: p.Portal}})
		if err != nil {
			return false, fmt.Errorf("patient %s: %w", p.ID, err)
		}
		if !p.OptIn {
			continue
		}
		pat, err := as(p.ID, auth.RolePatient)
		if err != nil {
			return false, err
		}
		if _, err := prefs.UpdateCommunicationPreferences(pat, &preferencesv1.UpdateCommunicationPreferencesRequest{
			CommunicationPreferences: &preferencesv1.CommunicationPreferences{Name: "patients/" + p.ID + "/communicationPreferences", ChatOptIn: true}}); err != nil {
			return false, fmt.Errorf("opt in %s: %w", p.ID, err)
		}
	}
	return true, nil
}
