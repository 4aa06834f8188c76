package ids

import (
	"slices"
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
		for _, cols := range [][]string{{"conversations"}, {"conversations", "messages"}, {"patients"}, {}} {
			got, ok := Parse(name, cols...)
			if want, wantOK := parseBySplit(name, cols...); ok != wantOK || !slices.Equal(got, want) {
				t.Fatalf("Parse(%q, %q) = %q, %v; strings.Split's reading: %q, %v", name, cols, got, ok, want, wantOK)
			}
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

// parseBySplit is Parse as it was written first, with strings.Split: the
// reading Parse must keep.
func parseBySplit(name string, collections ...string) ([]string, bool) {
	parts := strings.Split(name, "/")
	if len(parts) != 2*len(collections) {
		return nil, false
	}
	out := make([]string, len(collections))
	for i, c := range collections {
		if parts[2*i] != c || !Valid(parts[2*i+1]) {
			return nil, false
		}
		out[i] = parts[2*i+1]
	}
	return out, true
}

// TestParseAllocatesOnlyItsIds: the ids out are Parse's one allocation.
func TestParseAllocatesOnlyItsIds(t *testing.T) {
	for _, name := range []string{"conversations/c1/messages/m2", "conversations/c1/messages/", "conversations/c1/x/m2/y"} {
		allocs := testing.AllocsPerRun(100, func() { _, _ = Parse(name, "conversations", "messages") })
		if allocs > 1 {
			t.Errorf("Parse(%q): %v allocations, want at most 1", name, allocs)
		}
	}
}
