package main

import (
	"testing"

	"github.com/clinicchat/clinicchat/services/delivery"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// "delivery migrate" applies the schema and exits, configured by flags or, as a
// Kubernetes init container runs it, by CLINICCHAT_* environment variables alone.
func TestMigrateSubcommand(t *testing.T) {
	testkit.MigrateSubcommand(t, "delivery", run, delivery.Migrate)
}
