package localcluster_test

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	collectortracev1 "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/internal/e2e"
	"github.com/clinicchat/clinicchat/cmd/clinicchat/localcluster"
)

// span is what the receiver keeps of an exported span.
type span struct {
	service, name     string
	trace, id, parent string
}

// otlpReceiver is an OTLP/HTTP trace receiver (POST /v1/traces, protobuf),
// standing in for the collector the processes export to.
type otlpReceiver struct {
	url   string
	mu    sync.Mutex
	spans []span
}

func startReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	r := &otlpReceiver{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		var in collectortracev1.ExportTraceServiceRequest
		if err != nil || req.URL.Path != "/v1/traces" || proto.Unmarshal(body, &in) != nil {
			http.Error(w, "bad export", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		for _, rs := range in.GetResourceSpans() {
			service := ""
			for _, a := range rs.GetResource().GetAttributes() {
				if a.GetKey() == "service.name" {
					service = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					r.spans = append(r.spans, span{service: service, name: s.GetName(), trace: hex.EncodeToString(s.GetTraceId()),
						id: hex.EncodeToString(s.GetSpanId()), parent: hex.EncodeToString(s.GetParentSpanId())})
				}
			}
		}
		r.mu.Unlock()
		out, _ := proto.Marshal(&collectortracev1.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	r.url = "http://" + lis.Addr().String()
	return r
}

func (r *otlpReceiver) all() []span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]span(nil), r.spans...)
}

// The distributed stack, with the standard OTEL_* variables pointing at a
// collector, traces one send across processes: the gateway's HTTP span,
// delivery's server span and its publish, audit's and conversation's
// consumer spans, and the gateway's write to the recipient's stream, in one
// trace, each the child of the span before it. Each process serves its own
// /metrics on its --metrics-addr; with --debug, its pprof and runtime
// metrics on a debug address, which show --gogc taken, and the NATS server
// its monitoring.
func TestDistributedTraceAndMetrics(t *testing.T) {
	rcv := startReceiver(t)
	c := start(t, func(cfg *localcluster.Config) {
		cfg.Env = []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + rcv.url, "OTEL_BSP_SCHEDULE_DELAY=100"}
		cfg.Debug, cfg.GOGC = true, 300
	})
	e := env(c)
	staff, alice := e.As(t, "dr-lee", "dentist"), e.As(t, "alice", "patient")
	conv := staff.StartConversation("alice")
	stream := alice.Events()
	sent := staff.Send(conv.Name, "Your crown is ready", e2e.ReqID("trace", 1))
	require.Equal(t, sent.Name, stream.Next(t, "message.created").Message(t).Name)

	const root = "POST /v1/{parent=conversations/*}/messages"
	want := map[string]string{ // span name → the process that must have made it
		root: "gateway",
		"clinicchat.delivery.v1.DeliveryService/CreateMessage": "delivery",
		"publish clinicchat.delivery.message.created":          "delivery",
		"consume audit-delivery":                               "audit",
		"consume conversation-projection":                      "conversation",
		"fanout clinicchat.delivery.message.created":           "gateway",
		"sse write": "gateway",
	}
	var trace []span
	require.Eventually(t, func() bool {
		spans := rcv.all()
		var id string
		for _, s := range spans {
			if s.name == root && s.service == "gateway" {
				id = s.trace
			}
		}
		trace = trace[:0]
		found := map[string]bool{}
		for _, s := range spans {
			if s.trace == id && id != "" {
				trace = append(trace, s)
				if want[s.name] == s.service {
					found[s.name] = true
				}
			}
		}
		return len(found) == len(want)
	}, 30*time.Second, 50*time.Millisecond, "one trace with a span of each process on the way")

	deliveryServer := "delivery:clinicchat.delivery.v1.DeliveryService/CreateMessage"
	paths := map[[2]string][]string{ // span (process, name) → its ancestry, root first
		{"audit", "consume audit-delivery"}: {"gateway:" + root, "gateway:clinicchat.delivery.v1.DeliveryService/CreateMessage",
			deliveryServer, "delivery:publish clinicchat.delivery.message.created", "audit:consume audit-delivery"},
		{"gateway", "sse write"}: {"gateway:" + root, "gateway:clinicchat.delivery.v1.DeliveryService/CreateMessage", deliveryServer,
			"delivery:publish clinicchat.delivery.message.created", "gateway:fanout clinicchat.delivery.message.created", "gateway:sse write"},
	}
	// Every path from a span of that name to the root (the trace goes on past
	// the projection: its conversation.updated is streamed too); spans end,
	// and are exported, in their own time.
	ancestors := func(service, name string) [][]string {
		var in []span
		for _, s := range rcv.all() {
			if s.trace == trace[0].trace {
				in = append(in, s)
			}
		}
		byID := map[string]span{}
		for _, s := range in {
			byID[s.id] = s
		}
		var out [][]string
		for _, s := range in {
			if s.name == name && s.service == service {
				var path []string
				for cur, ok := s, true; ok && len(path) <= len(in); cur, ok = byID[cur.parent] {
					path = append([]string{cur.service + ":" + cur.name}, path...)
				}
				out = append(out, path)
			}
		}
		return out
	}
	for span, path := range paths {
		require.Eventually(t, func() bool {
			for _, p := range ancestors(span[0], span[1]) {
				if slices.Equal(p, path) {
					return true
				}
			}
			return false
		}, 30*time.Second, 50*time.Millisecond, "ancestry of %s: %v", span, ancestors(span[0], span[1]))
	}

	// Metrics, process by process.
	scrape := func(name string) map[string]*dto.MetricFamily {
		resp, err := http.Get("http://" + c.MetricsAddrs[name] + "/metrics")
		require.NoError(t, err, name)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, name)
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(resp.Body)
		require.NoError(t, err, name)
		return fams
	}
	has := func(fams map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
		for _, m := range fams[name].GetMetric() {
			match := true
			for k, v := range labels {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == k && l.GetValue() == v)
				}
				match = match && found
			}
			if match {
				return m.GetGauge().GetValue() + m.GetCounter().GetValue(), true
			}
		}
		return 0, false
	}
	for _, name := range []string{"conversation", "delivery-1", "attachment", "preferences", "audit"} {
		fams := scrape(name)
		_, ok := has(fams, "grpc_server_started_total", nil)
		require.True(t, ok, "%s: gRPC server metrics", name)
		if name != "audit" {
			svc := strings.TrimSuffix(name, "-1")
			_, ok := has(fams, "clinicchat_outbox_backlog_events", map[string]string{"service": svc})
			require.True(t, ok, "%s: outbox backlog", name)
		}
	}
	created, ok := has(scrape("delivery-1"), "grpc_server_handled_total",
		map[string]string{"grpc_method": "CreateMessage", "grpc_code": "OK"})
	require.True(t, ok)
	require.EqualValues(t, 1, created)
	audit := scrape("audit")
	_, ok = has(audit, "clinicchat_nats_consumer_pending_messages", map[string]string{"consumer": "audit-delivery"})
	require.True(t, ok, "audit reports its consumers' lag")
	_, ok = has(audit, "clinicchat_nats_consumer_pending_messages", map[string]string{"consumer": "conversation-projection"})
	require.False(t, ok, "and not another service's")
	_, ok = has(audit, "clinicchat_audit_checkpoint_age_seconds", nil)
	require.True(t, ok)
	streams, ok := has(scrape("gateway"), "clinicchat_gateway_sse_clients", nil)
	require.True(t, ok)
	require.EqualValues(t, 1, streams, "alice's stream")

	// --debug and --gogc, process by process.
	get := func(addr, path string) string {
		resp, err := http.Get("http://" + addr + path)
		require.NoError(t, err, addr+path)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, addr+path)
		return string(b)
	}
	for _, name := range []string{"gateway", "conversation", "delivery-1", "attachment", "preferences", "audit"} {
		require.NotEmpty(t, c.DebugAddrs[name], name)
		require.Contains(t, get(c.DebugAddrs[name], "/debug/metrics"), "\n/gc/gogc:percent 300\n", name)
	}
	require.Contains(t, get(c.DebugAddrs["nats"], "/varz"), `"in_msgs"`)
	require.Contains(t, get(c.DebugAddrs["nats-pprof"], "/debug/pprof/"), "goroutine")

	// Every Go process runs with the stack's GODEBUG (SysmonGODEBUG), the
	// NATS server included.
	pids := c.PIDs()
	for _, name := range []string{"gateway", "conversation", "delivery-1", "attachment", "preferences", "audit", "nats"} {
		require.Contains(t, pids, name)
		environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pids[name]))
		if errors.Is(err, os.ErrNotExist) {
			continue // no /proc here
		}
		require.NoError(t, err, name)
		godebug := ""
		for _, kv := range strings.Split(string(environ), "\x00") {
			if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
				godebug = v // the cluster leaves one
			}
		}
		require.Contains(t, strings.Split(godebug, ","), localcluster.SysmonGODEBUG, name)
	}
}
