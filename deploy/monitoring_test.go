package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
)

const monitoringDir = "k8s/components/monitoring"

// renderMonitoring builds the monitoring component the way an overlay that
// lists it would (through an in-memory overlay, since a Component does not
// build on its own) and returns its objects by kind.
func renderMonitoring(t *testing.T) map[string][]*unstructured.Unstructured {
	t.Helper()
	mem := filesys.MakeFsInMemory()
	err := fs.WalkDir(os.DirFS(monitoringDir), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path.Join(monitoringDir, p))
		if err != nil {
			return err
		}
		return mem.WriteFile(path.Join("/app/components/monitoring", p), b)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := mem.WriteFile("/app/overlay/kustomization.yaml", []byte(
		"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: clinicchat\ncomponents:\n  - ../components/monitoring\n")); err != nil {
		t.Fatal(err)
	}
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(mem, "/app/overlay")
	if err != nil {
		t.Fatalf("kustomize build with components/monitoring: %v", err)
	}
	out := map[string][]*unstructured.Unstructured{}
	for _, res := range resMap.Resources() {
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(mustJSON(t, res)); err != nil {
			t.Fatalf("%s: %v", res.CurId(), err)
		}
		out[u.GetKind()] = append(out[u.GetKind()], u)
	}
	return out
}

// rule is one alerting rule of the PrometheusRule.
type rule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func alertRules(t *testing.T, objs map[string][]*unstructured.Unstructured) []rule {
	t.Helper()
	if len(objs["PrometheusRule"]) != 1 {
		t.Fatalf("want one PrometheusRule, got %d", len(objs["PrometheusRule"]))
	}
	raw, err := json.Marshal(objs["PrometheusRule"][0].Object["spec"])
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []rule `json:"rules"`
		} `json:"groups"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		t.Fatalf("PrometheusRule spec: %v", err)
	}
	var rules []rule
	for _, g := range spec.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("rule group %q is unnamed or empty", g.Name)
		}
		rules = append(rules, g.Rules...)
	}
	return rules
}

// dashboard is what the test reads of the Grafana dashboard.
type dashboard struct {
	Title  string `json:"title"`
	UID    string `json:"uid"`
	Panels []struct {
		Title      string `json:"title"`
		Type       string `json:"type"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func loadDashboard(t *testing.T, objs map[string][]*unstructured.Unstructured) dashboard {
	t.Helper()
	var cm *unstructured.Unstructured
	for _, o := range objs["ConfigMap"] {
		if o.GetName() == "clinicchat-grafana-dashboard" {
			cm = o
		}
	}
	if cm == nil {
		t.Fatal("no ConfigMap clinicchat-grafana-dashboard")
	}
	if cm.GetLabels()["grafana_dashboard"] != "1" {
		t.Errorf("the dashboard ConfigMap lacks the label grafana_dashboard=1 the Grafana sidecar looks for")
	}
	data, _, _ := unstructured.NestedString(cm.Object, "data", "clinicchat.json")
	fromFile, err := os.ReadFile(path.Join(monitoringDir, "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if data != string(fromFile) {
		t.Error("the ConfigMap does not carry grafana-dashboard.json")
	}
	var d dashboard
	if err := json.Unmarshal([]byte(data), &d); err != nil {
		t.Fatalf("grafana-dashboard.json does not parse: %v", err)
	}
	return d
}

// exprMetrics returns the metric names a PromQL expression reads: strings,
// label matchers, ranges and grouping label lists removed, what remains is
// identifiers that are neither functions (followed by "(") nor keywords.
func exprMetrics(expr string) []string {
	for _, re := range []*regexp.Regexp{
		regexp.MustCompile(`"(?:[^"\\]|\\.)*"`),
		regexp.MustCompile(`\{[^}]*\}`),
		regexp.MustCompile(`\[[^\]]*\]`),
		regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`),
	} {
		expr = re.ReplaceAllString(expr, " ")
	}
	keywords := map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true,
		"without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true}
	seen := map[string]bool{}
	var out []string
	ident := regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	for _, loc := range ident.FindAllStringIndex(expr, -1) {
		name := expr[loc[0]:loc[1]]
		if loc[0] > 0 && (expr[loc[0]-1] >= '0' && expr[loc[0]-1] <= '9' || expr[loc[0]-1] == '.') {
			continue // the exponent or unit of a number (1e3)
		}
		if strings.HasPrefix(strings.TrimLeft(expr[loc[1]:], " \t\n"), "(") || keywords[strings.ToLower(name)] || seen[name] {
			continue
		}
		seen[name] = true
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func TestExprMetrics(t *testing.T) {
	got := exprMetrics(`sum by (grpc_service, le) (rate(foo_bucket{code=~"5..", route="/v1/{a=b/*}"}[$__rate_interval])) / on (pod) bar:ratio > 1e3
		or max without(x) (baz) + histogram_quantile(0.99, qux_total offset 5m)`)
	want := []string{"bar:ratio", "baz", "foo_bucket", "qux_total"}
	if !slices.Equal(got, want) {
		t.Errorf("exprMetrics = %v, want %v", got, want)
	}
}

// TestMonitoring checks the monitoring component: the PodMonitor scrapes
// every workload's metrics port, every alert the operators need is there
// and well formed, the dashboard parses and has its panels, and every
// metric the alerts and the dashboard read is one a running clinicchat
// really serves (scraped from an all-in-one's --metrics-addr).
func TestMonitoring(t *testing.T) {
	objs := renderMonitoring(t)

	// Scraping.
	if len(objs["PodMonitor"]) != 1 {
		t.Fatalf("want one PodMonitor, got %d", len(objs["PodMonitor"]))
	}
	pm := objs["PodMonitor"][0]
	exprs, _, _ := unstructured.NestedSlice(pm.Object, "spec", "selector", "matchExpressions")
	var selected []string
	for _, e := range exprs {
		if m, ok := e.(map[string]any); ok && m["key"] == "app.kubernetes.io/name" && m["operator"] == "In" {
			for _, v := range m["values"].([]any) {
				selected = append(selected, v.(string))
			}
		}
	}
	for _, w := range workloads {
		if !slices.Contains(selected, w) {
			t.Errorf("the PodMonitor does not scrape %s", w)
		}
	}
	endpoints, _, _ := unstructured.NestedSlice(pm.Object, "spec", "podMetricsEndpoints")
	if len(endpoints) != 1 || endpoints[0].(map[string]any)["port"] != "metrics" || endpoints[0].(map[string]any)["path"] != "/metrics" {
		t.Errorf("podMetricsEndpoints %v: want port metrics, path /metrics", endpoints)
	}

	// Alerts.
	rules := alertRules(t, objs)
	var names []string
	read := map[string][]string{} // metric -> where it is read
	for _, r := range rules {
		names = append(names, r.Alert)
		if r.Alert == "" || strings.TrimSpace(r.Expr) == "" || r.Annotations["summary"] == "" {
			t.Errorf("rule %q: needs alert, expr and a summary", r.Alert)
		}
		if s := r.Labels["severity"]; s != "warning" && s != "critical" {
			t.Errorf("rule %s: severity %q, want warning or critical", r.Alert, s)
		}
		if _, err := model.ParseDuration(r.For); err != nil {
			t.Errorf("rule %s: for %q: %v", r.Alert, r.For, err)
		}
		for _, m := range exprMetrics(r.Expr) {
			read[m] = append(read[m], "alert "+r.Alert)
		}
	}
	for _, want := range []string{"ClinicchatConsumerLag", "ClinicchatOutboxBacklog", "ClinicchatGRPCErrorRate",
		"ClinicchatHTTPErrorRate", "ClinicchatSendLatencyP99", "ClinicchatAuditVerificationFailed"} {
		if !slices.Contains(names, want) {
			t.Errorf("no alert %s", want)
		}
	}

	// Dashboard.
	d := loadDashboard(t, objs)
	if d.Title == "" || d.UID == "" {
		t.Error("the dashboard needs a title and a uid")
	}
	var titles []string
	for _, p := range d.Panels {
		titles = append(titles, p.Title)
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %q, want the ${datasource} variable", p.Title, p.Datasource.UID)
		}
		for _, q := range p.Targets {
			for _, m := range exprMetrics(q.Expr) {
				read[m] = append(read[m], "panel "+p.Title)
			}
		}
	}
	for _, want := range []string{"Send rate", "Error rate", "p99 latency", "Outbox backlog", "Consumer lag", "SSE streams", "Audit checkpoint age"} {
		if !slices.Contains(titles, want) {
			t.Errorf("no dashboard panel %q", want)
		}
	}
	for _, m := range []string{"clinicchat_nats_consumer_pending_messages", "clinicchat_outbox_backlog_events", "grpc_server_handled_total",
		"clinicchat_gateway_sse_clients", "clinicchat_audit_checkpoint_age_seconds", "clinicchat_audit_log_valid"} {
		if len(read[m]) == 0 {
			t.Errorf("neither the alerts nor the dashboard read %s", m)
		}
	}

	// Every metric read is served.
	served := scrapeAllInOne(t)
	for _, m := range sortedKeys(read) {
		if !isServed(served, m) {
			t.Errorf("%s (read by %s) is not a metric clinicchat serves", m, strings.Join(slices.Compact(read[m]), ", "))
		}
	}
}

// isServed: name is a family, or a histogram's _bucket, _sum or _count.
func isServed(fams map[string]*dto.MetricFamily, name string) bool {
	if _, ok := fams[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if f, ok := fams[strings.TrimSuffix(name, suffix)]; ok && strings.HasSuffix(name, suffix) &&
			(f.GetType() == dto.MetricType_HISTOGRAM || (suffix != "_bucket" && f.GetType() == dto.MetricType_SUMMARY)) {
			return true
		}
	}
	return false
}

// scrapeAllInOne starts an all-in-one (every service and the gateway in one
// process, serving the union of their metrics on --metrics-addr), makes one
// API request so the request metrics have a series, and scrapes it.
func scrapeAllInOne(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	cfg := allinone.Config{HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", DataDir: t.TempDir(), Dev: true,
		ArchiveAfter: 8760 * time.Hour, ArchiveSweepInterval: time.Hour, StepUpWindow: 5 * time.Minute, DrainTimeout: 5 * time.Second}
	in, err := allinone.Start(context.Background(), cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Stop() })
	resp, err := http.Post("http://"+in.HTTPAddr+"/v1/dev/tokens", "application/json",
		strings.NewReader(`{"subject":"dr-lee","role":"dentist","practice":"`+allinone.DemoPractice+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	resp, err = http.Get("http://" + in.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("scrape does not parse: %v", err)
	}
	return fams
}
