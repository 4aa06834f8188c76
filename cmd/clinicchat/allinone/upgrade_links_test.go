package allinone_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/services/attachment"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// linksDurable opens the data dir's NATS store (the all-in-one stopped)
// and returns the attachment service's durable as it found it; edit (if
// any) then changes its configuration.
func linksDurable(t *testing.T, dir string, edit func(*jetstream.ConsumerConfig)) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns, nc, err := natsx.StartEmbedded(natsx.EmbeddedConfig{StoreDir: filepath.Join(dir, "nats")}, testkit.Logger(t))
	require.NoError(t, err)
	defer func() { nc.Close(); ns.Shutdown(); ns.WaitForShutdown() }()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	c, err := js.Consumer(ctx, natsx.StreamDelivery, attachment.ConsumerLinks)
	require.NoError(t, err)
	info := c.CachedInfo()
	if edit != nil {
		cfg := info.Config
		edit(&cfg)
		_, err = js.UpdateConsumer(ctx, natsx.StreamDelivery, cfg)
		require.NoError(t, err)
	}
	return info
}

// A data dir of the version before messages without attachments were
// marked: the attachment service's durable takes every message.created
// (natsx.Filter) and a message with a file sent then is linked. After the
// upgrade the same durable, from where it was, takes only the subjects
// that may carry attachments: the file sent before and one sent after are
// both linked (a patient who has not signed in recently may open them),
// and the plain messages sent after are not delivered to it.
func TestUpgradeKeepsTheLinksDurableAndSkipsPlainMessages(t *testing.T) {
	dir := t.TempDir()
	h := harness{t: t, in: start(t, dir)}
	staff := h.as("dr-lee", "dentist")
	conv := staff.startConversation("alice")
	sendFile := func(requestID string) string {
		name := uploadRaw(staff, conv.Name, requestID+".pdf", pdfWith(1))
		require.NotEmpty(t, name)
		code, _, err := sendRaw(staff, conv.Name, map[string]any{"text": "a file", "requestId": requestID, "attachments": []string{name}})
		require.NoError(t, err)
		require.Equal(t, 200, code)
		return name
	}
	patient := h.asIn("alice", "patient", allinone.DemoPractice, 24*time.Hour) // not stepped up: needs the link
	before := sendFile("before")
	code, _ := patient.download(before)
	require.Equal(t, 200, code)
	require.NoError(t, h.in.Stop())
	old := linksDurable(t, dir, func(c *jetstream.ConsumerConfig) {
		c.FilterSubject, c.FilterSubjects = "", natsx.Filter(natsx.SubjectMessageCreated) // as the version before had it
	})

	h = harness{t: t, in: start(t, dir)}
	staff = h.as("dr-lee", "dentist")
	patient = h.asIn("alice", "patient", allinone.DemoPractice, 24*time.Hour)
	for i := range 3 {
		staff.send(conv.Name, "plain", reqID("plain", i))
	}
	after := sendFile("after")
	for _, name := range []string{before, after} {
		code, _ := patient.download(name)
		require.Equal(t, 200, code, "%s is linked", name)
	}
	control := uploadRaw(staff, conv.Name, "nowhere.pdf", pdfWith(2))
	code, _ = patient.download(control)
	require.NotEqual(t, 200, code, "an upload on no message is not linked")
	require.NoError(t, h.in.Stop())

	now := linksDurable(t, dir, nil)
	require.Equal(t, old.Created, now.Created, "the same durable, updated in place")
	require.Equal(t, natsx.CreatedWithAttachments(), now.Config.FilterSubjects)
	require.Equal(t, old.Delivered.Consumer+1, now.Delivered.Consumer, "only the message with a file was delivered")
}
