// Package messageview decides how a message looks to one viewer. It is the
// one place the sensitive-message rule lives: the delivery service applies it
// to every read, and the gateway to every message it streams.
package messageview

import (
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
)

// DefaultStepUpWindow is how recently a patient must have authenticated to
// see a sensitive message (SPEC.md: 5 minutes).
const DefaultStepUpWindow = 5 * time.Minute

// Locked reports whether viewer may not see m's content now: a sensitive
// message to a patient whose authentication is older than window. The
// patient's own messages are never locked to them.
func Locked(m *deliveryv1.Message, viewer auth.Identity, now time.Time, window time.Duration) bool {
	if !m.GetSensitive() || !viewer.IsPatient() {
		return false
	}
	if m.GetSender() == viewer.Principal() {
		return false
	}
	return !viewer.SteppedUp(now, window)
}

// ForViewer returns m as viewer may see it: a copy with locked=true and no
// text, attachments or artifact when Locked, else a copy with locked=false.
func ForViewer(m *deliveryv1.Message, viewer auth.Identity, now time.Time, window time.Duration) *deliveryv1.Message {
	return Apply(proto.Clone(m).(*deliveryv1.Message), viewer, now, window)
}

// Apply makes m, a message its caller owns (made for this viewer, shared
// with no one), what ForViewer would return for it, and returns it: no
// copy.
func Apply(m *deliveryv1.Message, viewer auth.Identity, now time.Time, window time.Duration) *deliveryv1.Message {
	if Locked(m, viewer, now, window) {
		m.Locked = true
		m.Text = ""
		m.Attachments = nil
		m.Artifact = nil
	} else {
		m.Locked = false
	}
	return m
}

// Preview is the conversation-list preview of m: never the content of a
// sensitive message.
func Preview(m *deliveryv1.Message) string {
	switch {
	case m.GetSensitive():
		return "Sensitive message"
	case m.GetText() != "":
		if t := m.GetText(); utf8.RuneCountInString(t) <= 120 && utf8.ValidString(t) {
			return t // as string([]rune(t)), without its two copies
		}
		r := []rune(m.GetText())
		if len(r) > 120 {
			return string(r[:119]) + "…"
		}
		return string(r)
	case m.GetArtifact() != nil:
		switch m.GetArtifact().GetType().String() {
		case "APPOINTMENT":
			return "Appointment"
		case "INVOICE":
			return "Invoice"
		case "PRESCRIPTION":
			return "Prescription"
		}
	case len(m.GetAttachments()) > 0:
		return "Attachment"
	}
	return ""
}
