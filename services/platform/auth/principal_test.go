package auth

import "testing"

// IsPrincipal and AppendPrincipal are Principal without making it.
func TestIsPrincipalAndAppendPrincipalArePrincipal(t *testing.T) {
	for _, id := range []Identity{{Subject: "pa", Role: RolePatient}, {Subject: "u1", Role: "dentist"}, {Subject: "", Role: RolePatient},
		{Subject: "s", Role: RoleSystem}} {
		p := id.Principal()
		if got := string(id.AppendPrincipal([]byte("x"))); got != "x"+p {
			t.Fatalf("AppendPrincipal %q, want %q", got, "x"+p)
		}
		for _, name := range []string{p, p + "x", p[:len(p)-1], "users/" + id.Subject, "patients/" + id.Subject, "", "users/", "patients/"} {
			if got := id.IsPrincipal(name); got != (name == p) {
				t.Fatalf("%+v IsPrincipal(%q) = %v", id, name, got)
			}
		}
		if n := testing.AllocsPerRun(10, func() { _ = id.IsPrincipal(p) }); n != 0 {
			t.Fatalf("IsPrincipal allocates %v", n)
		}
	}
}
