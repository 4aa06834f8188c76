package godebug

import (
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// With adds the stack's setting to the GODEBUG a process would see,
// keeps the others and every other variable, leaves a GODEBUG that already
// names the setting alone (an operator's own schedtrace wins), and leaves
// exactly one GODEBUG.
func TestWith(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		want string // the result's GODEBUG
	}{
		{"none", []string{"PATH=/bin"}, "GODEBUG=" + Steady},
		{"empty", []string{"GODEBUG="}, "GODEBUG=" + Steady},
		{"others kept", []string{"GODEBUG=http2client=0,gctrace=1"}, "GODEBUG=http2client=0,gctrace=1," + Steady},
		{"the operator's wins", []string{"GODEBUG=schedtrace=1000"}, "GODEBUG=schedtrace=1000"},
		{"the last one counts", []string{"GODEBUG=schedtrace=1000", "GODEBUG=gctrace=1"}, "GODEBUG=gctrace=1," + Steady},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := append([]string{"HOME=/h"}, tc.env...)
			got := With(env, Steady)
			var godebugs, others []string
			for _, kv := range got {
				if strings.HasPrefix(kv, "GODEBUG=") {
					godebugs = append(godebugs, kv)
				} else {
					others = append(others, kv)
				}
			}
			require.Equal(t, []string{tc.want}, godebugs)
			require.Equal(t, slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "GODEBUG=") }), others)
		})
	}
}
