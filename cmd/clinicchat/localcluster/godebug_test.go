package localcluster

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// withGODEBUG adds the stack's setting to the GODEBUG a process would see,
// keeps the others, and leaves a GODEBUG that already names the setting
// alone (an operator's own schedtrace wins).
func TestWithGODEBUG(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		want string // the last GODEBUG of the result
	}{
		{"none", []string{"PATH=/bin"}, "GODEBUG=" + SysmonGODEBUG},
		{"empty", []string{"GODEBUG="}, "GODEBUG=" + SysmonGODEBUG},
		{"others kept", []string{"GODEBUG=http2client=0,gctrace=1"}, "GODEBUG=http2client=0,gctrace=1," + SysmonGODEBUG},
		{"the operator's wins", []string{"GODEBUG=schedtrace=1000"}, "GODEBUG=schedtrace=1000"},
		{"the last one counts", []string{"GODEBUG=schedtrace=1000", "GODEBUG=gctrace=1"}, "GODEBUG=gctrace=1," + SysmonGODEBUG},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := withGODEBUG(append([]string(nil), tc.env...), SysmonGODEBUG)
			last := ""
			for _, kv := range got {
				if len(kv) >= 8 && kv[:8] == "GODEBUG=" {
					last = kv
				}
			}
			require.Equal(t, tc.want, last)
		})
	}
}
