package messageview_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/policy/messageview"
)

// ForViewer leaves the message it is given as it was and returns a copy;
// Apply gives the same view in the message itself. A sensitive message
// from staff is locked for a patient who has not stepped up (no text,
// attachments or artifact), and open to the same patient after a step-up
// and to staff.
func TestForViewerAndApply(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	msg := func() *deliveryv1.Message {
		return &deliveryv1.Message{
			Name: "conversations/c1/messages/1", Sender: "users/u1", Sensitive: true, Text: "results",
			Attachments: []*deliveryv1.Message_AttachmentRef{{Attachment: "attachments/a1"}},
		}
	}
	stale := auth.Identity{Subject: "p1", Role: auth.RolePatient, AuthTime: now.Add(-time.Hour)}
	fresh := auth.Identity{Subject: "p1", Role: auth.RolePatient, AuthTime: now.Add(-time.Minute)}
	staff := auth.Identity{Subject: "u2", Role: auth.RoleDentist}
	w := messageview.DefaultStepUpWindow

	for _, tc := range []struct {
		name   string
		viewer auth.Identity
		locked bool
	}{{"patient without step-up", stale, true}, {"patient stepped up", fresh, false}, {"staff", staff, false}} {
		t.Run(tc.name, func(t *testing.T) {
			in := msg()
			in.Locked = !tc.locked // a stale mark is overwritten either way
			orig := proto.Clone(in)
			out := messageview.ForViewer(in, tc.viewer, now, w)
			require.True(t, proto.Equal(orig, in), "ForViewer changed its input")
			require.NotSame(t, in, out)
			require.Equal(t, tc.locked, out.GetLocked())
			if tc.locked {
				require.Empty(t, out.GetText())
				require.Empty(t, out.GetAttachments())
			} else {
				require.Equal(t, "results", out.GetText())
				require.Len(t, out.GetAttachments(), 1)
			}

			own := msg()
			own.Locked = !tc.locked
			applied := messageview.Apply(own, tc.viewer, now, w)
			require.Same(t, own, applied, "Apply changes the message in place")
			require.True(t, proto.Equal(out, applied), "Apply and ForViewer give the same view")
		})
	}
}

// A short text is its own preview (no copy); a long one is cut at 119
// characters and an ellipsis; invalid UTF-8 is read as before.
func TestPreviewText(t *testing.T) {
	short := strings.Repeat("é", 120)
	require.Equal(t, short, messageview.Preview(&deliveryv1.Message{Text: short}))
	require.Zero(t, testing.AllocsPerRun(10, func() { _ = messageview.Preview(&deliveryv1.Message{Text: short}) }))
	long := strings.Repeat("é", 121)
	require.Equal(t, strings.Repeat("é", 119)+"…", messageview.Preview(&deliveryv1.Message{Text: long}))
	require.Equal(t, "a\uFFFDb", messageview.Preview(&deliveryv1.Message{Text: "a\xffb"}))
}
