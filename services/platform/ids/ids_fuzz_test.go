package ids

import (
	"strings"
	"testing"
)

// FuzzParse: any resource name parses or fails cleanly; what parses is
// exactly the collections and valid ids it was made of.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"conversations/c1/messages/m2", "conversations/c1", "conversations//messages/m",
		"conversations/c1/messages/m2/x", "conversations/../messages/%2F", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		for _, cols := range [][]string{{"conversations"}, {"conversations", "messages"}, {"patients"}} {
			got, ok := Parse(name, cols...)
			if !ok {
				continue
			}
			parts := make([]string, 0, 2*len(cols))
			for i, c := range cols {
				if !Valid(got[i]) {
					t.Fatalf("%q: invalid id %q", name, got[i])
				}
				parts = append(parts, c, got[i])
			}
			if strings.Join(parts, "/") != name {
				t.Fatalf("%q parsed as %v", name, got)
			}
		}
	})
}
