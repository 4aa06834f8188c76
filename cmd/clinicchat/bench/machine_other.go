//go:build !unix

package bench

// Machine is the unix build's calibration (machine_unix.go); elsewhere the
// bench runs without it.
type Machine struct {
	SyscallMicros         float64 `json:"syscallMicros"`
	WakeupRoundTripMicros float64 `json:"wakeupRoundTripMicros"`
}

func measureMachine() (*Machine, error) { return nil, nil }
