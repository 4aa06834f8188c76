package main

import (
	"testing"

	"github.com/clinicchat/clinicchat/services/conversation"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// "conversation migrate" applies the schema and exits, configured by flags or, as a
// Kubernetes init container runs it, by CLINICCHAT_* environment variables alone.
func TestMigrateSubcommand(t *testing.T) {
	testkit.MigrateSubcommand(t, "conversation", run, conversation.Migrate)
}
