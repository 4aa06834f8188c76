package gateway

import (
	"fmt"
	"testing"

	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// A message without attachments is published with natsx.NoAttachments
// after its thread's tokens (natsx.CreatedSubject), one with attachments on
// the thread's subject, as every message was before: a patient resuming
// with Last-Event-ID reads both forms of its thread, once each, in order,
// and nothing of another patient's thread.
func TestAPatientResumesAcrossMessagesWithAndWithoutAttachments(t *testing.T) {
	h := newHarness(t)
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m0", "users/doc", "x", 1, false))
	for i, attachments := range []bool{false, true, false} {
		m := messageCreated("p1", "ca", "pa", fmt.Sprint("m", i+1), "users/doc", "x", int64(i+2), false)
		h.publishLegacy(natsx.CreatedSubject(tenantSubject(natsx.SubjectMessageCreated, m), attachments), m)
		other := messageCreated("p1", "cb", "pb", fmt.Sprint("o", i+1), "users/doc", "x", int64(i+1), false)
		h.publishLegacy(natsx.CreatedSubject(tenantSubject(natsx.SubjectMessageCreated, other), attachments), other)
	}
	h.publish(natsx.SubjectMessageCreated, messageCreated("p1", "ca", "pa", "m4", "users/doc", "x", 5, false))
	patient := h.openEvents(h.token("pa", auth.RolePatient, "p1", 0), "d1.c0")
	for i := 1; i <= 4; i++ {
		requireMessage(t, patient.next(), fmt.Sprint("conversations/ca/messages/m", i))
	}
}
