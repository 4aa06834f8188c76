//go:build !unix

package bench

// Machine is the unix build's calibration (machine_unix.go); elsewhere the
// bench runs without it.
type Machine struct {
	SyscallMicros       float64 `json:"syscallMicros"`
	WakeupOneCPUMicros  float64 `json:"wakeupOneCpuMicros"`
	WakeupTwoCPUsMicros float64 `json:"wakeupTwoCpusMicros,omitempty"`
}

func measureMachine() (*Machine, error) { return nil, nil }
