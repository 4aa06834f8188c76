package natsx

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// TestUsersPublishOnlyTheirOwnEvents runs a NATS server with a user per
// process (ServerUsers): the gateway's user cannot publish delivery's
// message.created (the server refuses it and the stream the audit log
// consumes never holds it), nor purge or delete a stream, while delivery's
// user publishes its own events and the gateway its own access events.
func TestUsersPublishOnlyTheirOwnEvents(t *testing.T) {
	passwords := map[string]string{}
	for _, p := range Processes {
		passwords[p] = "pw-" + p
	}
	users, err := ServerUsers(passwords)
	require.NoError(t, err)
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		Users: users, NoSigs: true, NoLog: true})
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	t.Cleanup(ns.Shutdown)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	connect := func(user, password string) (*nats.Conn, jetstream.JetStream, chan error) {
		errs := make(chan error, 16)
		nc, err := Connect(Config{URL: ns.ClientURL(), User: user, Password: password, Name: user})
		require.NoError(t, err)
		nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		})
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		require.NoError(t, CheckServer(ctx, nc, js))
		return nc, js, errs
	}

	// A wrong password is refused.
	bad, err := nats.Connect(ns.ClientURL(), nats.UserInfo("delivery", "wrong"))
	if err == nil {
		bad.Close()
	}
	require.Error(t, err)

	_, djs, _ := connect("delivery", passwords["delivery"])
	require.NoError(t, EnsureStreams(ctx, djs, StreamsConfig{}))
	real := Tenant(SubjectMessageCreated, "demo", "patients/p1")
	_, err = djs.Publish(ctx, real, []byte("real"), jetstream.WithMsgID("real-1"))
	require.NoError(t, err, "delivery publishes its own events")

	_, gjs, gerrs := connect("gateway", passwords["gateway"])
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = gjs.Publish(pctx, Tenant(SubjectMessageCreated, "demo", "patients/p1"), []byte("forged"), jetstream.WithMsgID("forged-1"))
	pcancel()
	require.Error(t, err, "the gateway must not publish delivery's events")
	select {
	case perr := <-gerrs:
		require.ErrorIs(t, perr, nats.ErrPermissionViolation)
	case <-ctx.Done():
		t.Fatal("the server did not report the refused publish")
	}
	for _, op := range []func(context.Context) error{
		func(ctx context.Context) error { return gjs.DeleteStream(ctx, StreamDelivery) },
		func(ctx context.Context) error {
			_, err := gjs.UpdateStream(ctx, jetstream.StreamConfig{Name: StreamDelivery, Subjects: []string{"x.>"}})
			return err
		},
	} {
		octx, ocancel := context.WithTimeout(ctx, 2*time.Second)
		require.Error(t, op(octx), "the gateway must not change the streams")
		ocancel()
	}
	// What the audit log consumes holds delivery's event only.
	str, err := djs.Stream(ctx, StreamDelivery)
	require.NoError(t, err)
	info, err := str.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, info.State.Msgs)
	m, err := str.GetLastMsgForSubject(ctx, real)
	require.NoError(t, err)
	require.Equal(t, "real", string(m.Data))

	// The gateway still publishes its own access events and reads streams.
	_, err = gjs.Publish(ctx, Tenant(SubjectGatewayAccess, "demo"), []byte("access"), jetstream.WithMsgID("gw-1"))
	require.NoError(t, err)
	cons, err := gjs.OrderedConsumer(ctx, StreamDelivery, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	got, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	require.NoError(t, err)
	require.Equal(t, "real", string(got.Data()))
}

func TestAuthorizationConf(t *testing.T) {
	pw := map[string]string{}
	for _, p := range Processes {
		pw[p] = "$NATS_PASSWORD_" + p
	}
	conf, err := AuthorizationConf(pw)
	require.NoError(t, err)
	require.Contains(t, conf, `{ user: "delivery", password: $NATS_PASSWORD_delivery, permissions: { publish: { allow: ["clinicchat.delivery.>", "$JS.API.>", "$JS.ACK.>"] } } }`)
	require.Contains(t, conf, `{ user: "gateway", password: $NATS_PASSWORD_gateway, permissions: { publish: { allow: ["clinicchat.gateway.>", "$JS.API.INFO"`)
	delete(pw, "audit")
	_, err = AuthorizationConf(pw)
	require.ErrorContains(t, err, "no password for the NATS user audit")
	_, err = PublishAllow("nobody")
	require.Error(t, err)
}

func TestConfigValidate(t *testing.T) {
	require.NoError(t, Config{URL: "nats://x", User: "delivery", Password: "p"}.Validate())
	err := Config{TLSCert: "c", Password: "p", CredsFile: "f", NKeySeedFile: "n"}.Validate()
	for _, want := range []string{"--nats-url is required", "--nats-tls-key", "--nats-password needs --nats-user", "use one of"} {
		require.ErrorContains(t, err, want)
	}
}
