package allinone_test

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/services/platform/telemetry"
)

// traceOf returns the spans of one trace, by span id.
func traceOf(spans tracetest.SpanStubs, id trace.TraceID) map[trace.SpanID]tracetest.SpanStub {
	out := map[trace.SpanID]tracetest.SpanStub{}
	for _, s := range spans {
		if s.SpanContext.TraceID() == id {
			out[s.SpanContext.SpanID()] = s
		}
	}
	return out
}

// chain is the names of s and its ancestors up to the root, root first
// ("" where a parent is missing from the trace).
func chain(byID map[trace.SpanID]tracetest.SpanStub, s tracetest.SpanStub) []string {
	var names []string
	for range len(byID) + 1 {
		names = append([]string{s.Name}, names...)
		if !s.Parent.IsValid() {
			return names
		}
		p, ok := byID[s.Parent.SpanID()]
		if !ok {
			return append([]string{""}, names...)
		}
		s = p
	}
	return names
}

// One send is one trace: the gateway's HTTP span is its root, the gRPC hop
// into delivery its child, and from delivery's transaction the event goes
// through the outbox (the publish span), to the consumers (audit, the
// conversation projection) and through the gateway's fan-out to the
// recipient's event stream, each span the child of the one before.
func TestASendIsOneTraceFromTheGatewayToTheRecipientsStream(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	telemetry.Install(tp)
	t.Cleanup(func() {
		telemetry.Install(noop.NewTracerProvider())
		_ = tp.Shutdown(t.Context())
	})
	require.True(t, telemetry.Enabled())

	h := harness{t: t, in: start(t, t.TempDir())}
	staff := h.as("dr-lee", "dentist")
	alice := h.as("alice", "patient")
	conv := staff.startConversation("alice")
	aliceEvents := alice.events("")
	sent := staff.send(conv.Name, "Your crown is ready", reqID("trace", 1))
	require.Equal(t, sent.Name, eventMessage(t, aliceEvents.next(t, "message.created")).Name)

	const (
		root    = "POST /v1/{parent=conversations/*}/messages"
		grpcIn  = "clinicchat.delivery.v1.DeliveryService/CreateMessage"
		publish = "publish clinicchat.delivery.message.created"
	)
	// The gateway's server span ends once the answer is written, which may
	// be after the client has read it: wait for it to be exported.
	var sendTrace trace.TraceID
	require.Eventually(t, func() bool {
		for _, s := range exp.GetSpans() {
			if s.Name == root && s.SpanKind == trace.SpanKindServer {
				sendTrace = s.SpanContext.TraceID()
			}
		}
		return sendTrace.IsValid()
	}, 15*time.Second, 5*time.Millisecond, "the gateway traced the send")

	// The consumers finish on their own time: wait until each has ended
	// its span (spans are exported when they end).
	want := map[string][]string{
		"consume audit-delivery":          {root, grpcIn, grpcIn, publish, "consume audit-delivery"},
		"consume conversation-projection": {root, grpcIn, grpcIn, publish, "consume conversation-projection"},
		"sse write":                       {root, grpcIn, grpcIn, publish, "fanout clinicchat.delivery.message.created", "sse write"},
	}
	// paths are the chains of every span of each wanted name.
	paths := func() (map[trace.SpanID]tracetest.SpanStub, map[string][][]string) {
		byID := traceOf(exp.GetSpans(), sendTrace)
		out := map[string][][]string{}
		for _, s := range byID {
			if _, ok := want[s.Name]; ok && (s.Name != "sse write" || hasAttr(s, "clinicchat.viewer", "patients/alice")) {
				out[s.Name] = append(out[s.Name], chain(byID, s))
			}
		}
		return byID, out
	}
	// Client and server spans of the gRPC hop carry the same name. The trace
	// goes on past the projection (its conversation.updated is published
	// and streamed too): each wanted path must be among the span's chains.
	onPath := func(chains [][]string, path []string) bool {
		for _, c := range chains {
			if slices.Equal(c, path) {
				return true
			}
		}
		return false
	}
	require.Eventually(t, func() bool {
		_, got := paths()
		for name, path := range want {
			if !onPath(got[name], path) {
				return false
			}
		}
		return true
	}, 15*time.Second, 20*time.Millisecond, "spans of the consumers and the recipient's stream in the send's trace")
	byID, got := paths()
	for name, path := range want {
		require.True(t, onPath(got[name], path), "ancestry of %s: %v", name, got[name])
	}
	kinds := map[string]trace.SpanKind{}
	for _, s := range byID {
		kinds[s.Name+"/"+s.SpanKind.String()] = s.SpanKind
	}
	for _, k := range []string{root + "/server", grpcIn + "/client", grpcIn + "/server", publish + "/producer",
		"consume audit-delivery/consumer", "fanout clinicchat.delivery.message.created/consumer"} {
		require.Contains(t, kinds, k)
	}
	// The transaction's other hops (conversation, preferences) are in it too.
	var hops []string
	for _, s := range byID {
		if s.SpanKind == trace.SpanKindServer && strings.HasPrefix(s.Name, "clinicchat.") {
			hops = append(hops, s.Name)
		}
	}
	require.Contains(t, hops, "clinicchat.conversation.v1.ConversationService/ResolveConversation")
}

func hasAttr(s tracetest.SpanStub, key, value string) bool {
	for _, a := range s.Attributes {
		if string(a.Key) == key && a.Value.Emit() == value {
			return true
		}
	}
	return false
}

// scrape reads the Prometheus text of url.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(raw)))
	require.NoError(t, err, "%s", raw)
	return fams
}

// value is the value of the family's series with labels (nil: none such).
func value(fams map[string]*dto.MetricFamily, name string, labels map[string]string) *float64 {
	f := fams[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		for k, v := range labels {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		var v float64
		switch {
		case m.Gauge != nil:
			v = m.GetGauge().GetValue()
		case m.Counter != nil:
			v = m.GetCounter().GetValue()
		case m.Histogram != nil:
			v = float64(m.GetHistogram().GetSampleCount())
		}
		return &v
	}
	return nil
}

// The operator listener (--metrics-addr) serves every metric the dashboard
// and the alerts read, with values that follow what happened: a send is
// counted by the gRPC server metrics, the outbox drains to zero, every
// durable consumer reports its lag, the open event stream is counted, and
// the audit checkpoint age is there.
func TestMetricsListenerServesTheOperatorsMetrics(t *testing.T) {
	in := startWith(t, t.TempDir(), func(c *allinone.Config) { c.MetricsAddr = "127.0.0.1:0" })
	require.NotEmpty(t, in.MetricsAddr)
	h := harness{t: t, in: in}
	staff := h.as("dr-lee", "dentist")
	alice := h.as("alice", "patient")
	conv := staff.startConversation("alice")
	aliceEvents := alice.events("")
	const sends = 3
	for i := range sends {
		sent := staff.send(conv.Name, fmt.Sprintf("note %d", i), reqID("metrics", i))
		require.Equal(t, sent.Name, eventMessage(t, aliceEvents.next(t, "message.created")).Name)
	}
	url := "http://" + in.MetricsAddr + "/metrics"

	fams := scrape(t, url)
	created := value(fams, "grpc_server_handled_total", map[string]string{
		"grpc_service": "clinicchat.delivery.v1.DeliveryService", "grpc_method": "CreateMessage", "grpc_code": "OK"})
	require.NotNil(t, created)
	require.EqualValues(t, sends, *created)
	lat := value(fams, "grpc_server_handling_seconds", map[string]string{"grpc_method": "CreateMessage"})
	require.NotNil(t, lat, "the latency histogram")
	require.EqualValues(t, sends, *lat)
	// Methods never called are there at zero (InitMetrics).
	untouched := value(fams, "grpc_server_handled_total", map[string]string{"grpc_method": "ExportAuditLog", "grpc_code": "OK"})
	if untouched != nil {
		require.Zero(t, *untouched)
	}
	sse := value(fams, "clinicchat_gateway_sse_clients", nil)
	require.NotNil(t, sse)
	require.EqualValues(t, 1, *sse, "alice's stream")
	age := value(fams, "clinicchat_audit_checkpoint_age_seconds", nil)
	require.NotNil(t, age)
	require.GreaterOrEqual(t, *age, 0.0)
	require.Less(t, *age, 3600.0)
	valid := value(fams, "clinicchat_audit_log_valid", nil)
	require.NotNil(t, valid)
	require.EqualValues(t, 1, *valid)
	for _, svc := range []string{"delivery", "conversation", "attachment", "preferences"} {
		require.NotNil(t, value(fams, "clinicchat_outbox_backlog_events", map[string]string{"service": svc}), svc)
		require.NotNil(t, value(fams, "clinicchat_outbox_oldest_event_age_seconds", map[string]string{"service": svc}), svc)
	}
	for _, c := range []string{"audit-delivery", "conversation-projection", "attachment-links", "delivery-receipts"} {
		require.NotNil(t, value(fams, "clinicchat_nats_consumer_pending_messages", map[string]string{"consumer": c}), c)
	}
	// Each send's event crossed the in-process NATS connection at least
	// once each way (its publish and its acknowledgement).
	for _, dir := range []string{"out", "in"} {
		n := value(fams, "clinicchat_nats_connection_messages_total", map[string]string{"direction": dir})
		require.NotNil(t, n, dir)
		require.GreaterOrEqual(t, *n, float64(sends), dir)
	}

	// Everything sent is relayed and consumed: the backlog and the lag of
	// the delivery stream's consumers settle at zero.
	require.Eventually(t, func() bool {
		fams := scrape(t, url)
		for _, c := range []string{"audit-delivery", "conversation-projection", "attachment-links"} {
			v := value(fams, "clinicchat_nats_consumer_pending_messages", map[string]string{"consumer": c})
			a := value(fams, "clinicchat_nats_consumer_ack_pending_messages", map[string]string{"consumer": c})
			if v == nil || a == nil || *v != 0 || *a != 0 {
				return false
			}
		}
		b := value(fams, "clinicchat_outbox_backlog_events", map[string]string{"service": "delivery"})
		return b != nil && *b == 0
	}, 10*time.Second, 50*time.Millisecond)

	// The stream closes: the gauge follows.
	aliceEvents.cancel()
	require.Eventually(t, func() bool {
		v := value(scrape(t, url), "clinicchat_gateway_sse_clients", nil)
		return v != nil && *v == 0
	}, 10*time.Second, 20*time.Millisecond)
}
