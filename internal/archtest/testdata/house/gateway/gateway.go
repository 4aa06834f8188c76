// Package gateway may import only protos and platform.
package gateway

import (
	_ "example.com/house/proto/chat"
	_ "example.com/house/services/platform/errs"
)
