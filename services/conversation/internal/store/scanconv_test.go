package store

import (
	"testing"
	"time"
)

// rowOf is a scanner that stores one row's values into Scan's destinations.
type rowOf []any

func (r rowOf) Scan(dest ...any) error {
	for i, d := range dest {
		switch d := d.(type) {
		case *string:
			*d = r[i].(string)
		case *int:
			*d = r[i].(int)
		case *int64:
			*d = r[i].(int64)
		}
	}
	return nil
}

// TestScanConvInOneAllocation: a conversation row is read into its fields
// (times, state, the viewer's flags and the extra destinations included) with
// one allocation for all of Scan's destinations.
func TestScanConvInOneAllocation(t *testing.T) {
	created := time.Date(2026, 12, 2, 9, 30, 0, 0, time.UTC)
	row := rowOf{"p1", "c1", "alice", "Alice Johnson", 1, created.UnixMicro(), created.Add(time.Hour).UnixMicro(), int64(42), "hi",
		created.Add(2 * time.Hour).UnixMicro(), "users/hana", "", 1, 0, int64(40), 2, int64(7)}
	var extra int64
	var s scanner = row // boxed once: not scanConv's allocation
	c, err := scanConv(s, true, &extra)
	if err != nil {
		t.Fatal(err)
	}
	if c.Practice != "p1" || c.ID != "c1" || c.PatientID != "alice" || c.PatientDisplayName != "Alice Johnson" ||
		int(c.State) != 1 || !c.CreateTime.Equal(created) || !c.LastMessageTime.Equal(created.Add(time.Hour)) ||
		c.LastMessageSeq != 42 || c.LastMessagePreview != "hi" || !c.AwaitingReplySince.Equal(created.Add(2*time.Hour)) ||
		c.Assignee != "users/hana" || c.AssigneeDisplayName != "hana" || !c.Pinned || c.Muted || c.ReadSeq != 40 ||
		c.UnreadCount != 2 || extra != 7 {
		t.Fatalf("scanned %+v, extra %d", c, extra)
	}
	if allocs := testing.AllocsPerRun(100, func() { _, _ = scanConv(s, true, &extra) }); allocs > 1 {
		t.Errorf("scanConv: %v allocations, want 1", allocs)
	}
}
