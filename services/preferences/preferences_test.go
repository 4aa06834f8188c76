package preferences_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
	typev1 "github.com/clinicchat/clinicchat/proto/clinicchat/type/v1"
	"github.com/clinicchat/clinicchat/services/platform/errs"
	"github.com/clinicchat/clinicchat/services/platform/grpcx"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
	"github.com/clinicchat/clinicchat/services/preferences"
)

// env is the preferences service over real gRPC (bufconn, with the platform's
// interceptors and a test token verifier), a real database and an embedded
// NATS server with JetStream.
type env struct {
	t      *testing.T
	client preferencesv1.PreferencesServiceClient
	tokens *testkit.Tokens
	js     jetstream.JetStream
	events map[string]jetstream.Consumer
}

func newEnv(t *testing.T, b testkit.Backend) *env {
	t.Helper()
	return newEnvLease(t, b, 0)
}

// newEnvLease is newEnv with a read lease (preferences.Config.ReadLease).
func newEnvLease(t *testing.T, b testkit.Backend, lease time.Duration) *env {
	t.Helper()
	_, _, js := testkit.NATS(t)
	tokens, verifier := testkit.NewTokens()
	log := testkit.Logger(t)
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := preferences.New(ctx, preferences.Config{DatabaseDSN: b.DSN(t), ReadLease: lease}, preferences.Deps{Log: log, JS: js})
	require.NoError(t, err)
	srv := grpcx.NewServer(log, verifier)
	svc.Register(srv.Server)
	lis := bufconn.Listen(1 << 20)
	served, ran := make(chan struct{}), make(chan struct{})
	go func() { _ = srv.Serve(lis); close(served) }()
	go func() { _ = svc.Run(ctx); close(ran) }()
	conn, err := grpcx.DialListener(func(ctx context.Context) (net.Conn, error) { return lis.DialContext(ctx) })
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Stop()
		<-served
		cancel()
		<-ran
		require.NoError(t, svc.Close())
	})
	e := &env{t: t, client: preferencesv1.NewPreferencesServiceClient(conn), tokens: tokens, js: js, events: map[string]jetstream.Consumer{}}
	for _, subject := range []string{natsx.SubjectPatientUpserted, natsx.SubjectPreferencesChanged, natsx.SubjectPreferencesAccess} {
		c, err := js.OrderedConsumer(context.Background(), natsx.StreamPreferences, jetstream.OrderedConsumerConfig{FilterSubjects: natsx.Filter(subject)})
		require.NoError(t, err)
		e.events[subject] = c
	}
	return e
}

// as returns a context that calls as subject with role in practice.
func (e *env) as(subject, role, practice string) context.Context {
	tok := e.tokens.Token(e.t, subject, role, practice, 0)
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

// next waits for the next event on subject and decodes it into msg.
func (e *env) next(subject string, msg proto.Message) {
	e.t.Helper()
	m, err := e.events[subject].Next(jetstream.FetchMaxWait(10 * time.Second))
	require.NoError(e.t, err, "no event on %s", subject)
	require.NoError(e.t, proto.Unmarshal(m.Data(), msg))
}

// none asserts that no further event is on subject.
func (e *env) none(subject string) {
	e.t.Helper()
	_, err := e.events[subject].Next(jetstream.FetchMaxWait(300 * time.Millisecond))
	require.True(e.t, errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, nats.ErrTimeout), "unexpected event on %s (%v)", subject, err)
}

// denied waits for an AccessRecorded DENIED event and checks it.
func (e *env) denied(actor, action, resource string) {
	e.t.Helper()
	var ev typev1.AccessRecorded
	e.next(natsx.SubjectPreferencesAccess, &ev)
	require.Equal(e.t, typev1.EventMeta_DENIED, ev.GetMeta().GetOutcome())
	require.Equal(e.t, actor, ev.GetMeta().GetActor())
	require.Equal(e.t, action, ev.GetMeta().GetAction())
	require.Equal(e.t, resource, ev.GetMeta().GetResource())
}

func requireCode(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, code, status.Code(err), "%v", err)
	require.Equal(t, reason, errs.Reason(err), "%v", err)
}

func upsertReq(name, ext, display, dob string, portal bool) *preferencesv1.UpsertPatientRequest {
	return &preferencesv1.UpsertPatientRequest{Patient: &preferencesv1.Patient{
		Name: name, ExternalId: ext, DisplayName: display, DateOfBirth: dob, HasPortalAccount: portal}}
}

func forEachBackend(t *testing.T, f func(t *testing.T, e *env)) {
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			f(t, newEnv(t, b))
		})
	}
}

func TestUpsertPatient(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *env) {
		system := e.as("pms", "system", "pr")
		p, err := e.client.UpsertPatient(system, upsertReq("", "ext-1", "  José García ", "1980-02-03", true))
		require.NoError(t, err)
		require.Regexp(t, `^patients/[a-z2-7]{26}$`, p.GetName())
		require.Equal(t, "José García", p.GetDisplayName())
		require.False(t, p.GetChatOptIn(), "chat is off until the patient turns it on")
		require.False(t, p.GetChatEligible())
		require.Equal(t, preferencesv1.Patient_CHAT_OPTED_OUT, p.GetIneligibleReason())
		var ev preferencesv1.PatientUpserted
		e.next(natsx.SubjectPatientUpserted, &ev)
		require.Equal(t, "patient.upsert", ev.GetMeta().GetAction())
		require.Equal(t, p.GetName(), ev.GetMeta().GetResource())
		require.Equal(t, "users/pms", ev.GetMeta().GetActor())
		require.True(t, proto.Equal(p, ev.GetPatient()))

		// Idempotent: the same upsert returns the same patient and publishes nothing.
		again, err := e.client.UpsertPatient(system, upsertReq("", "ext-1", "José García", "1980-02-03", true))
		require.NoError(t, err)
		require.True(t, proto.Equal(p, again))
		e.none(natsx.SubjectPatientUpserted)

		// A change by external id updates the same patient.
		changed, err := e.client.UpsertPatient(system, upsertReq("", "ext-1", "José García", "1980-02-03", false))
		require.NoError(t, err)
		require.Equal(t, p.GetName(), changed.GetName())
		require.Equal(t, preferencesv1.Patient_NO_PORTAL_ACCOUNT, changed.GetIneligibleReason())
		e.next(natsx.SubjectPatientUpserted, &ev)
		require.False(t, ev.GetPatient().GetHasPortalAccount())

		// A practice admin upserts by name (the patient's portal subject).
		admin := e.as("admin", "practice_admin", "pr")
		named, err := e.client.UpsertPatient(admin, upsertReq("patients/p-ana", "ext-2", "Ana Ruiz", "1990-12-31", true))
		require.NoError(t, err)
		require.Equal(t, "patients/p-ana", named.GetName())
		e.next(natsx.SubjectPatientUpserted, &ev)

		// Another patient's external id.
		_, err = e.client.UpsertPatient(admin, upsertReq("patients/p-ana", "ext-1", "Ana Ruiz", "1990-12-31", true))
		requireCode(t, err, codes.AlreadyExists, "EXTERNAL_ID_IN_USE")

		// Validation.
		for _, req := range []*preferencesv1.UpsertPatientRequest{
			{},
			upsertReq("", "", "Ana", "1990-01-01", true),
			upsertReq("", "ext 3", "Ana", "1990-01-01", true),
			upsertReq("", "ext-3", "   ", "1990-01-01", true),
			upsertReq("", "ext-3", "Ana", "1990-1-01", true),
			upsertReq("", "ext-3", "Ana", "1990-02-30", true),
			upsertReq("", "ext-3", "Ana", "", true),
			upsertReq("", "ext-3", "Ana", time.Now().AddDate(1, 0, 0).Format(time.DateOnly), true),
			upsertReq("users/x", "ext-3", "Ana", "1990-01-01", true),
			upsertReq("patients/a/b", "ext-3", "Ana", "1990-01-01", true),
		} {
			_, err := e.client.UpsertPatient(system, req)
			requireCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
		}
		_, err = e.client.UpsertPatient(system, upsertReq("", "ext-3", "Ana", "1990-13-01", true))
		require.NotContains(t, status.Convert(err).Message(), "1990-13-01", "messages never echo PHI")

		// Staff and patients may not write the directory.
		for _, role := range []string{"dentist", "front_desk", "patient"} {
			_, err := e.client.UpsertPatient(e.as("u1", role, "pr"), upsertReq("", "ext-9", "Eve", "1990-01-01", true))
			requireCode(t, err, codes.PermissionDenied, "PERMISSION_DENIED")
			actor := "users/u1"
			if role == "patient" {
				actor = "patients/u1"
			}
			e.denied(actor, "patient.upsert", "patients")
		}
		e.none(natsx.SubjectPatientUpserted)

		// No token at all.
		_, err = e.client.UpsertPatient(context.Background(), upsertReq("", "ext-9", "Eve", "1990-01-01", true))
		requireCode(t, err, codes.Unauthenticated, "UNAUTHENTICATED")
	})
}

func TestGetPatientTenancyAndPrivacy(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *env) {
		_, err := e.client.UpsertPatient(e.as("pms", "system", "pr"), upsertReq("patients/p1", "e1", "Ana Ruiz", "1990-01-01", true))
		require.NoError(t, err)
		_, err = e.client.UpsertPatient(e.as("pms", "system", "pr"), upsertReq("patients/p2", "e2", "Bea Ruiz", "1991-01-01", true))
		require.NoError(t, err)
		get := &preferencesv1.GetPatientRequest{Name: "patients/p1"}
		for _, ctx := range []context.Context{e.as("d", "dentist", "pr"), e.as("pms", "system", "pr"), e.as("p1", "patient", "pr")} {
			p, err := e.client.GetPatient(ctx, get)
			require.NoError(t, err)
			require.Equal(t, "Ana Ruiz", p.GetDisplayName())
			require.Equal(t, "1990-01-01", p.GetDateOfBirth())
		}
		// Another patient: NOT_FOUND, recorded as a denied view.
		_, err = e.client.GetPatient(e.as("p2", "patient", "pr"), get)
		requireCode(t, err, codes.NotFound, "NOT_FOUND")
		e.denied("patients/p2", "patient.view", "patients/p1")
		// Another practice: NOT_FOUND.
		_, err = e.client.GetPatient(e.as("d", "dentist", "other"), get)
		requireCode(t, err, codes.NotFound, "NOT_FOUND")
		_, err = e.client.GetPatient(e.as("d", "dentist", "pr"), &preferencesv1.GetPatientRequest{Name: "patients/nobody"})
		requireCode(t, err, codes.NotFound, "NOT_FOUND")
		_, err = e.client.GetPatient(e.as("d", "dentist", "pr"), &preferencesv1.GetPatientRequest{Name: "p1"})
		requireCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	})
}

func TestCommunicationPreferences(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *env) {
		_, err := e.client.UpsertPatient(e.as("pms", "system", "pr"), upsertReq("patients/p1", "e1", "Ana Ruiz", "1990-01-01", true))
		require.NoError(t, err)
		const name = "patients/p1/communicationPreferences"
		self := e.as("p1", "patient", "pr")
		prefs, err := e.client.GetCommunicationPreferences(self, &preferencesv1.GetCommunicationPreferencesRequest{Name: name})
		require.NoError(t, err)
		require.Equal(t, name, prefs.GetName())
		require.False(t, prefs.GetChatOptIn())
		_, err = e.client.GetCommunicationPreferences(e.as("fd", "front_desk", "pr"), &preferencesv1.GetCommunicationPreferencesRequest{Name: name})
		require.NoError(t, err)

		update := func(ctx context.Context, name string, optIn bool) (*preferencesv1.CommunicationPreferences, error) {
			return e.client.UpdateCommunicationPreferences(ctx, &preferencesv1.UpdateCommunicationPreferencesRequest{
				CommunicationPreferences: &preferencesv1.CommunicationPreferences{Name: name, ChatOptIn: optIn}})
		}
		// Only the patient changes them.
		_, err = update(e.as("d", "dentist", "pr"), name, true)
		requireCode(t, err, codes.PermissionDenied, "PERMISSION_DENIED")
		e.denied("users/d", "preferences.update", name)
		_, err = update(e.as("pms", "system", "pr"), name, true)
		requireCode(t, err, codes.PermissionDenied, "PERMISSION_DENIED")
		e.denied("users/pms", "preferences.update", name)
		_, err = update(e.as("p2", "patient", "pr"), name, true)
		requireCode(t, err, codes.NotFound, "NOT_FOUND")
		e.denied("patients/p2", "preferences.update", name)
		_, err = e.client.GetCommunicationPreferences(e.as("p2", "patient", "pr"), &preferencesv1.GetCommunicationPreferencesRequest{Name: name})
		requireCode(t, err, codes.NotFound, "NOT_FOUND")
		e.denied("patients/p2", "preferences.view", name)
		// A patient never seen in the directory, and another practice.
		_, err = update(e.as("p9", "patient", "pr"), "patients/p9/communicationPreferences", true)
		requireCode(t, err, codes.NotFound, "NOT_FOUND")
		_, err = update(e.as("p1", "patient", "other"), name, true)
		requireCode(t, err, codes.NotFound, "NOT_FOUND")
		_, err = update(self, "patients/p1", true)
		requireCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
		e.none(natsx.SubjectPreferencesChanged)

		// Opt in: published, and the very next read sees it.
		for _, optIn := range []bool{true, false, true} {
			prefs, err = update(self, name, optIn)
			require.NoError(t, err)
			require.Equal(t, optIn, prefs.GetChatOptIn())
			require.NotNil(t, prefs.GetUpdateTime())
			var ev preferencesv1.PreferencesChanged
			e.next(natsx.SubjectPreferencesChanged, &ev)
			require.Equal(t, "preferences.update", ev.GetMeta().GetAction())
			require.Equal(t, "patients/p1", ev.GetMeta().GetActor())
			require.Equal(t, name, ev.GetMeta().GetResource())
			require.Equal(t, optIn, ev.GetPreferences().GetChatOptIn())
			p, err := e.client.GetPatient(e.as("d", "dentist", "pr"), &preferencesv1.GetPatientRequest{Name: "patients/p1"})
			require.NoError(t, err)
			require.Equal(t, optIn, p.GetChatEligible())
		}
		// Setting the value it has changes nothing.
		_, err = update(self, name, true)
		require.NoError(t, err)
		e.none(natsx.SubjectPreferencesChanged)
		// A directory update keeps the patient's choice.
		p, err := e.client.UpsertPatient(e.as("pms", "system", "pr"), upsertReq("", "e1", "Ana Ruiz Gil", "1990-01-01", true))
		require.NoError(t, err)
		require.True(t, p.GetChatOptIn())
	})
}

// TestTroubleshootingRows: the product guide's rows on who can be chatted with.
func TestTroubleshootingRows(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *env) {
		system := e.as("pms", "system", "pr")
		for _, p := range []struct {
			id, name string
			portal   bool
		}{{"nop", "Nora Portal-less", false}, {"out", "Nora Outerbridge", true}, {"in", "Nora Inman", true}} {
			_, err := e.client.UpsertPatient(system, upsertReq("patients/"+p.id, "ext-"+p.id, p.name, "1970-05-06", p.portal))
			require.NoError(t, err)
		}
		_, err := e.client.UpdateCommunicationPreferences(e.as("in", "patient", "pr"), &preferencesv1.UpdateCommunicationPreferencesRequest{
			CommunicationPreferences: &preferencesv1.CommunicationPreferences{Name: "patients/in/communicationPreferences", ChatOptIn: true}})
		require.NoError(t, err)
		staff := e.as("fd", "front_desk", "pr")

		// "Patient doesn't appear in search": no portal account (nor opted in).
		res, err := e.client.ListPatients(staff, &preferencesv1.ListPatientsRequest{Query: "nora"})
		require.NoError(t, err)
		require.Len(t, res.GetPatients(), 1)
		require.Equal(t, "patients/in", res.GetPatients()[0].GetName())
		require.True(t, res.GetPatients()[0].GetChatEligible())
		require.Equal(t, "1970-05-06", res.GetPatients()[0].GetDateOfBirth())

		// includeIneligible shows them, marked with the reason.
		res, err = e.client.ListPatients(staff, &preferencesv1.ListPatientsRequest{Query: "nora", IncludeIneligible: true})
		require.NoError(t, err)
		got := map[string]*preferencesv1.Patient{}
		for _, p := range res.GetPatients() {
			got[p.GetName()] = p
		}
		require.Len(t, got, 3)
		require.False(t, got["patients/nop"].GetChatEligible())
		require.Equal(t, preferencesv1.Patient_NO_PORTAL_ACCOUNT, got["patients/nop"].GetIneligibleReason())
		require.False(t, got["patients/out"].GetChatEligible())
		require.Equal(t, preferencesv1.Patient_CHAT_OPTED_OUT, got["patients/out"].GetIneligibleReason())
		require.Equal(t, preferencesv1.Patient_INELIGIBLE_REASON_UNSPECIFIED, got["patients/in"].GetIneligibleReason())

		// GetPatient carries the same marks (what conversation and delivery enforce).
		p, err := e.client.GetPatient(staff, &preferencesv1.GetPatientRequest{Name: "patients/nop"})
		require.NoError(t, err)
		require.Equal(t, preferencesv1.Patient_NO_PORTAL_ACCOUNT, p.GetIneligibleReason())

		// Patients do not search the directory.
		_, err = e.client.ListPatients(e.as("in", "patient", "pr"), &preferencesv1.ListPatientsRequest{Query: "nora"})
		requireCode(t, err, codes.PermissionDenied, "PERMISSION_DENIED")
		e.denied("patients/in", "patient.search", "patients")
	})
}

func TestListPatientsSearchAndPages(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *env) {
		system := e.as("pms", "system", "pr")
		names := []string{"José García", "José Martín", "Josefina Garrido", "María José García-López", "Ana García", "Ana", "Anaïs Dubois", "Jürgen Weiß", "Seán O'Brien"}
		for i, n := range names {
			_, err := e.client.UpsertPatient(system, upsertReq(fmt.Sprintf("patients/p%d", i), fmt.Sprintf("e%d", i), n, "1980-01-01", true))
			require.NoError(t, err)
		}
		staff := e.as("d", "dentist", "pr")
		search := func(q string, size int32) []string {
			var out []string
			tok := ""
			for {
				res, err := e.client.ListPatients(staff, &preferencesv1.ListPatientsRequest{Query: q, IncludeIneligible: true, PageSize: size, PageToken: tok})
				require.NoError(t, err)
				for _, p := range res.GetPatients() {
					out = append(out, p.GetDisplayName())
				}
				if tok = res.GetNextPageToken(); tok == "" {
					return out
				}
				require.LessOrEqual(t, len(out), len(names), "pages must end")
			}
		}
		for _, tc := range []struct {
			query string
			want  []string
		}{
			{"jose gar", []string{"José García", "Josefina Garrido", "María José García-López"}},
			{"jose garcia", []string{"José García", "María José García-López"}},
			{"JOSE", []string{"José García", "José Martín", "María José García-López", "Josefina Garrido"}},
			{"ana", []string{"Ana", "Ana García", "Anaïs Dubois"}},
			{"anais", []string{"Anaïs Dubois"}},
			{"weiss jurg", []string{"Jürgen Weiß"}},
			{"obrien", []string{"Seán O'Brien"}},
			{"o'brien sean", []string{"Seán O'Brien"}},
			{"garcia lopez", []string{"María José García-López"}},
			{"xyz", nil},
			{"", []string{"Ana", "Ana García", "Anaïs Dubois", "José García", "José Martín", "Josefina Garrido", "Jürgen Weiß", "María José García-López", "Seán O'Brien"}},
		} {
			for _, size := range []int32{0, 1, 2} {
				require.Equal(t, tc.want, search(tc.query, size), "query %q page size %d", tc.query, size)
			}
		}
		// Page tokens belong to their search.
		res, err := e.client.ListPatients(staff, &preferencesv1.ListPatientsRequest{Query: "jose", IncludeIneligible: true, PageSize: 1})
		require.NoError(t, err)
		require.NotEmpty(t, res.GetNextPageToken())
		_, err = e.client.ListPatients(staff, &preferencesv1.ListPatientsRequest{Query: "jose", PageSize: 1, PageToken: res.GetNextPageToken()})
		requireCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
		_, err = e.client.ListPatients(staff, &preferencesv1.ListPatientsRequest{Query: "ana", IncludeIneligible: true, PageSize: 1, PageToken: res.GetNextPageToken()})
		requireCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
		_, err = e.client.ListPatients(staff, &preferencesv1.ListPatientsRequest{Query: "jose", PageToken: "garbage!"})
		requireCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
		_, err = e.client.ListPatients(staff, &preferencesv1.ListPatientsRequest{PageSize: -1})
		requireCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
		// Another practice sees none of them.
		res, err = e.client.ListPatients(e.as("d", "dentist", "other"), &preferencesv1.ListPatientsRequest{IncludeIneligible: true})
		require.NoError(t, err)
		require.Empty(t, res.GetPatients())
	})
}

// With a read lease, GetPatient announces it and every patient write
// returns only a lease after its commit; without one, neither.
func TestReadLease(t *testing.T) {
	t.Parallel()
	const lease = 300 * time.Millisecond
	for _, b := range testkit.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			for _, l := range []time.Duration{lease, 0} {
				e := newEnvLease(t, b, l)
				// Creating the patient need not wait (no answer about them
				// could be leased); changing their entry must, and so must
				// an upsert that changes nothing within a lease of a change.
				_, err := e.client.UpsertPatient(e.as("pms", "system", "pr"), upsertReq("patients/p1", "e1", "Ana Ruiz", "1990-01-01", true))
				require.NoError(t, err)
				start := time.Now()
				_, err = e.client.UpsertPatient(e.as("pms", "system", "pr"), upsertReq("patients/p1", "e1", "Ana Ruiz-Ortega", "1990-01-01", true))
				require.NoError(t, err)
				upsert := time.Since(start)
				start = time.Now()
				_, err = e.client.UpsertPatient(e.as("pms", "system", "pr"), upsertReq("patients/p1", "e1", "Ana Ruiz-Ortega", "1990-01-01", true))
				require.NoError(t, err)
				same := time.Since(start)
				optIn := func() time.Duration {
					start := time.Now()
					_, err := e.client.UpdateCommunicationPreferences(e.as("p1", "patient", "pr"), &preferencesv1.UpdateCommunicationPreferencesRequest{
						CommunicationPreferences: &preferencesv1.CommunicationPreferences{Name: "patients/p1/communicationPreferences", ChatOptIn: true}})
					require.NoError(t, err)
					return time.Since(start)
				}
				update, again := optIn(), optIn()
				var header metadata.MD
				p, err := e.client.GetPatient(e.as("d", "dentist", "pr"), &preferencesv1.GetPatientRequest{Name: "patients/p1"}, grpc.Header(&header))
				require.NoError(t, err)
				require.True(t, p.GetChatEligible())
				if l > 0 {
					require.GreaterOrEqual(t, upsert, lease, "an upsert returns a lease after its commit")
					require.GreaterOrEqual(t, same, lease, "an upsert that changes nothing within a lease of a change waits too")
					require.GreaterOrEqual(t, update, lease, "an opt-in change returns a lease after its commit")
					require.GreaterOrEqual(t, again, lease, "the same opt-in again within a lease of the change waits too")
					require.Equal(t, []string{"300000"}, header.Get(grpcx.ReadLeaseHeader))
				} else {
					require.Empty(t, header.Get(grpcx.ReadLeaseHeader))
				}
				// A refusal carries no lease.
				header = nil
				_, err = e.client.GetPatient(e.as("p2", "patient", "pr"), &preferencesv1.GetPatientRequest{Name: "patients/p1"}, grpc.Header(&header))
				requireCode(t, err, codes.NotFound, "NOT_FOUND")
				require.Empty(t, header.Get(grpcx.ReadLeaseHeader))
			}
		})
	}
}
