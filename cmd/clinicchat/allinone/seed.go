package allinone

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/clinicchat/clinicchat/services/demoprovider"
)

// DemoPractice is the seeded practice id.
const DemoPractice = demoprovider.DemoPractice

// DemoStaff are the demo practice's staff (see demoprovider.DemoStaff).
var DemoStaff = demoprovider.DemoStaff

// DemoPatient is a seeded patient.
type DemoPatient = demoprovider.DemoPatient

// DemoPatients are the seeded patients (see demoprovider.DemoPatients).
var DemoPatients = demoprovider.DemoPatients

// seed creates the demo practice once per data dir (a marker file records
// it, so a patient who later opts out stays opted out across restarts).
func (in *Instance) seed(ctx context.Context) error {
	marker := in.cfg.path("demo-seeded")
	if _, err := os.Stat(marker); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := demoprovider.Seed(ctx, in.internal, in.DevIssuer); err != nil {
		return err
	}
	return os.WriteFile(marker, []byte("seeded "+time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600)
}
