package main

import (
	"testing"

	"github.com/clinicchat/clinicchat/services/audit"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// "audit migrate" applies the schema and exits, configured by flags or, as a
// Kubernetes init container runs it, by CLINICCHAT_* environment variables alone.
func TestMigrateSubcommand(t *testing.T) {
	testkit.MigrateSubcommand(t, "audit", run, audit.Migrate)
}
