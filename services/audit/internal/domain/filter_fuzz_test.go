package domain

import "testing"

// FuzzParseFilter: any text parses or fails cleanly, and what parses prints
// as a filter that parses to the same conditions.
func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{"", `actor="users/u"`, `action="message.send" AND resource="conversations/c"`,
		`outcome="DENIED" AND time>="2026-01-01T00:00:00Z" AND time<"2026-02-01T00:00:00Z"`,
		`actor="a\"b\\c"`, `resource=conversations/c AND`, `time>=`, `AND AND`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		flt, err := ParseFilter(s)
		if err != nil {
			return
		}
		again, err := ParseFilter(flt.String())
		if err != nil {
			t.Fatalf("%q parsed, but its String %q does not: %v", s, flt.String(), err)
		}
		if again.String() != flt.String() {
			t.Fatalf("%q: %q then %q", s, flt.String(), again.String())
		}
	})
}
