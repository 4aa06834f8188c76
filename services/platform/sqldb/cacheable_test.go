package sqldb

import "testing"

func TestCacheable(t *testing.T) {
	for q, want := range map[string]bool{
		"SELECT 1":                              true,
		"  insert into t VALUES (?)":            true,
		"UPDATE t SET a = 1":                    true,
		"DELETE FROM t;":                        true,
		"WITH x AS (SELECT 1) SELECT * FROM x":  true,
		"with\nx AS (SELECT 1) SELECT * FROM x": true,
		"WITHIN":                                false,
		"WITH":                                  false,
		"SELECT 1; SELECT 2":                    false,
		"CREATE TABLE t (a INT)":                false,
		"PRAGMA user_version":                   false,
		"":                                      false,
	} {
		if got := cacheable(q); got != want {
			t.Errorf("cacheable(%q) = %v, want %v", q, got, want)
		}
	}
}
