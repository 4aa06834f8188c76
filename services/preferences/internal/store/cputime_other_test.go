//go:build !linux

package store

import "time"

// threadCPU is unknown off Linux.
func threadCPU() time.Duration { return 0 }
