// Package domain imports an adapter through the outbox, database/sql directly,
// a layer above it, and the allowed typed errors.
package domain

import (
	_ "database/sql"
	_ "strings"

	_ "example.com/house/services/a/internal/app"
	_ "example.com/house/services/platform/errs"
	_ "example.com/house/services/platform/outbox"
)
