package store

import "embed"

// migrationsFS holds the numbered migrations of each dialect.
//
//go:embed migrations
var migrationsFS embed.FS
