package sqldb

import (
	"database/sql"
	"time"
)

// Micros stores a time as UTC microseconds since the Unix epoch (BIGINT in
// both dialects, so ordering and comparisons are portable).
func Micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

// FromMicros is the inverse of Micros; 0 is the zero time.
func FromMicros(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us).UTC()
}

// NullMicros reads a nullable micros column.
func NullMicros(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return FromMicros(n.Int64)
}
