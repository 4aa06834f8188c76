// Package domain is clean: standard library and typed errors only.
package domain

import (
	_ "time"

	_ "example.com/house/services/platform/errs"
)
