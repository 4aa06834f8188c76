package deploy_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Ports of the binaries (SPEC §4 and svcmain defaults).
const (
	grpcPort    = 9090
	httpPort    = 8080
	metricsPort = 9464 // --metrics-addr in clinicchat-common
)

func TestEveryOverlayIsTested(t *testing.T) {
	entries, err := os.ReadDir(filepath.Join("k8s", "overlays"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() && !slices.Contains(overlays, e.Name()) {
			t.Errorf("overlay %s is not in the manifest test's overlays list", e.Name())
		}
	}
}

// TestOverlays renders every overlay and checks it against what the binaries
// expect. Each failure names the overlay, the object and the field.
func TestOverlays(t *testing.T) {
	for _, overlay := range overlays {
		t.Run(overlay, func(t *testing.T) {
			r := render(t, overlay)
			production := overlay == "production"
			for _, w := range workloads {
				t.Run(w, func(t *testing.T) { checkWorkload(t, r, w, production) })
			}
			t.Run("images", func(t *testing.T) { checkImages(t, r) })
			t.Run("shared-settings", func(t *testing.T) { checkSharedSettings(t, r) })
			t.Run("nats", func(t *testing.T) { checkNATS(t, r, production) })
			t.Run("postgres", func(t *testing.T) { checkClusters(t, r, production) })
			t.Run("postgres-backups", func(t *testing.T) { checkBackups(t, r, production) })
			t.Run("ingress", func(t *testing.T) { checkIngress(t, r, production) })
			if production {
				t.Run("autoscaling", func(t *testing.T) { checkHPAs(t, r) })
				t.Run("disruption-budgets", func(t *testing.T) { checkPDBs(t, r) })
				t.Run("network-policies", func(t *testing.T) { checkNetworkPolicies(t, r) })
				t.Run("service-tls", func(t *testing.T) { checkServiceTLS(t, r) })
			}
		})
	}
}

// ---- workloads --------------------------------------------------------------

// envValue is one environment variable of a container, with where it comes from.
type envValue struct {
	value   string // when literal
	literal bool   // a value or a ConfigMap key (checkable)
	secret  *corev1.SecretKeySelector
	source  string
}

// containerEnv resolves a container's environment: env entries and every
// key of the ConfigMaps it imports. A variable set twice is an error (the
// winner would depend on ordering).
func containerEnv(t *testing.T, r *rendered, id string, c corev1.Container) map[string]envValue {
	t.Helper()
	env := map[string]envValue{}
	set := func(name string, v envValue) {
		if prev, ok := env[name]; ok {
			t.Errorf("%s: %s set twice (%s and %s)", id, name, prev.source, v.source)
		}
		env[name] = v
	}
	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm := r.configMaps[from.ConfigMapRef.Name]
			if cm == nil {
				t.Errorf("%s: envFrom ConfigMap %q is not in the overlay", id, from.ConfigMapRef.Name)
				continue
			}
			if from.Prefix != "" {
				t.Errorf("%s: envFrom prefix %q is not supported by the test", id, from.Prefix)
			}
			for k, v := range cm.Data {
				set(k, envValue{value: v, literal: true, source: "ConfigMap " + cm.Name})
			}
		default:
			t.Errorf("%s: envFrom other than a ConfigMap: its names cannot be checked", id)
		}
	}
	for _, e := range c.Env {
		v := envValue{source: "env"}
		switch {
		case e.ValueFrom == nil:
			v.value, v.literal = e.Value, true
		case e.ValueFrom.SecretKeyRef != nil:
			v.secret = e.ValueFrom.SecretKeyRef
		case e.ValueFrom.ConfigMapKeyRef != nil:
			cm := r.configMaps[e.ValueFrom.ConfigMapKeyRef.Name]
			if cm == nil {
				t.Errorf("%s: %s: ConfigMap %q is not in the overlay", id, e.Name, e.ValueFrom.ConfigMapKeyRef.Name)
				continue
			}
			val, ok := cm.Data[e.ValueFrom.ConfigMapKeyRef.Key]
			if !ok {
				t.Errorf("%s: %s: ConfigMap %s has no key %q", id, e.Name, cm.Name, e.ValueFrom.ConfigMapKeyRef.Key)
			}
			v.value, v.literal = val, true
		}
		set(e.Name, v)
	}
	return env
}

func checkWorkload(t *testing.T, r *rendered, w string, production bool) {
	d := r.deployments[w]
	if d == nil {
		t.Fatalf("no Deployment %s", w)
	}
	id := fmt.Sprintf("%s: Deployment %s", r.overlay, w)
	pod := d.Spec.Template
	spec := pod.Spec

	// Identity and selection.
	if got := pod.Labels["app.kubernetes.io/name"]; got != w {
		t.Errorf("%s: pod label app.kubernetes.io/name=%q", id, got)
	}
	if d.Spec.Selector == nil || !selects(d.Spec.Selector, pod.Labels) {
		t.Errorf("%s: selector does not match the pod template labels", id)
	}
	switch replicas := ptrOr(d.Spec.Replicas, 1); {
	case production && replicas < 2:
		t.Errorf("%s: %d replicas, production needs at least 2", id, replicas)
	case !production && replicas != 1:
		t.Errorf("%s: %d replicas, dev runs 1", id, replicas)
	}
	if sa := r.accounts[spec.ServiceAccountName]; sa == nil || spec.ServiceAccountName != w {
		t.Errorf("%s: serviceAccountName %q: want its own ServiceAccount %q in the overlay", id, spec.ServiceAccountName, w)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: automountServiceAccountToken must be false (no Kubernetes API access)", id)
	}

	// One container, the binary.
	if len(spec.Containers) != 1 || spec.Containers[0].Name != "server" {
		t.Fatalf("%s: want exactly one container named server", id)
	}
	checkPodSecurity(t, id, spec)
	c := spec.Containers[0]
	id += " container server"

	// Port and Service.
	wantPort, portName := int32(grpcPort), "grpc"
	if w == "gateway" {
		wantPort, portName = httpPort, "http"
	}
	wantPorts := 2 // the first, and "metrics"
	// With TLS (the cert-manager component) the kubelet probes a plaintext
	// health-only port instead, the container port named grpc-health.
	probePort := int32(grpcPort)
	if v, ok := containerEnv(t, r, id, c)[envName("grpc-health-addr")]; ok && w != "gateway" {
		_, port, err := net.SplitHostPort(v.value)
		probePort = int32(atoi(port))
		wantPorts++
		if p := portNamed(c, "grpc-health"); err != nil || p == nil || p.ContainerPort != probePort || p.Protocol != corev1.ProtocolTCP {
			t.Errorf("%s: CLINICCHAT_GRPC_HEALTH_ADDR=%q: want a port grpc-health on its port, got %+v", id, v.value, c.Ports)
		}
	}
	if w == "gateway" {
		wantPorts++ // and the public gRPC edge
		if p := portNamed(c, "grpc"); p == nil || p.ContainerPort != grpcPort || p.Protocol != corev1.ProtocolTCP {
			t.Errorf("%s: ports %+v, want http %d/TCP then grpc %d/TCP (the gRPC edge)", id, c.Ports, httpPort, grpcPort)
		}
	}
	if len(c.Ports) != wantPorts || c.Ports[0].Name != portName || c.Ports[0].ContainerPort != wantPort || c.Ports[0].Protocol != corev1.ProtocolTCP {
		t.Errorf("%s: ports %+v, want %s %d/TCP first", id, c.Ports, portName, wantPort)
	}
	checkService(t, r, w, pod.Labels, portName, wantPort)
	checkMetricsPort(t, r, id, w, pod, c)

	// Probes.
	if w == "gateway" {
		checkHTTPProbe(t, id+" livenessProbe", c.LivenessProbe, "/healthz", c)
		checkHTTPProbe(t, id+" readinessProbe", c.ReadinessProbe, "/readyz", c)
		if c.StartupProbe != nil {
			checkHTTPProbe(t, id+" startupProbe", c.StartupProbe, "/healthz", c)
		}
	} else {
		for name, p := range map[string]*corev1.Probe{"livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe, "startupProbe": c.StartupProbe} {
			if p == nil || p.GRPC == nil {
				t.Errorf("%s: %s must be a native grpc probe", id, name)
				continue
			}
			if p.GRPC.Port != probePort || (p.GRPC.Service != nil && *p.GRPC.Service != "") {
				t.Errorf("%s: %s checks port %d service %v, want %d and the server's overall health", id, name, p.GRPC.Port, p.GRPC.Service, probePort)
			}
		}
	}

	// Configuration: every variable is a flag of this binary and parses.
	fs := flagsFor(w)
	byEnv := flagByEnv(fs)
	env := containerEnv(t, r, id, c)
	for name, v := range env {
		if check, ok := goRuntimeEnv[name]; ok { // read by the Go runtime, not a flag
			if !v.literal || !check(v.value) {
				t.Errorf("%s: %s (from %s) = %q is not a value the Go runtime accepts", id, name, v.source, v.value)
			}
			continue
		}
		f := byEnv[name]
		if f == nil {
			t.Errorf("%s: %s (from %s) is not a flag of %s", id, name, v.source, w)
			continue
		}
		if v.literal {
			if err := f.Value.Set(v.value); err != nil {
				t.Errorf("%s: %s=%q does not parse as --%s: %v", id, name, v.value, f.Name, err)
			}
		}
	}
	checkRequiredSettings(t, r, id, w, fs, env, spec, production)
	checkMigrate(t, r, id, w, c, env, spec)

	// Graceful termination: preStop, then SIGTERM and the drain, all within
	// the grace period.
	drain := drainTimeout(fs, env)
	var preStop time.Duration
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		preStop = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	grace := time.Duration(ptrOr(spec.TerminationGracePeriodSeconds, 30)) * time.Second
	if grace <= drain+preStop {
		t.Errorf("%s: terminationGracePeriodSeconds %v <= preStop %v + drain timeout %v", id, grace, preStop, drain)
	}
}

// checkMigrate: a stateful service's pod applies its schema in an init
// container (`<service> migrate`, the server's image, its database only)
// before the server starts, and the server, with --migrate-on-start=false,
// only checks it. The gateway has no database and no init container.
func checkMigrate(t *testing.T, r *rendered, id, w string, server corev1.Container, env map[string]envValue, spec corev1.PodSpec) {
	t.Helper()
	if w == "gateway" {
		if len(spec.InitContainers) != 0 {
			t.Errorf("%s: the gateway has no database: no init containers", id)
		}
		return
	}
	if len(spec.InitContainers) != 1 || spec.InitContainers[0].Name != "migrate" {
		t.Errorf("%s: want one init container named migrate (the schema before the server starts)", id)
		return
	}
	m := spec.InitContainers[0]
	if m.Image != server.Image {
		t.Errorf("%s: init container migrate runs %q, want the server's image %q", id, m.Image, server.Image)
	}
	if !slices.Equal(m.Args, []string{"migrate"}) || len(m.Command) != 0 {
		t.Errorf("%s: init container migrate: command %q args %q, want the image's binary with args [migrate]", id, m.Command, m.Args)
	}
	menv := containerEnv(t, r, id+" init container migrate", m)
	dsn, srv := menv[envName("database-dsn")], env[envName("database-dsn")]
	if dsn.secret == nil || srv.secret == nil || *dsn.secret != *srv.secret {
		t.Errorf("%s: init container migrate must read CLINICCHAT_DATABASE_DSN from the server's Secret", id)
	}
	if len(menv) != 1 {
		t.Errorf("%s: init container migrate gets %d variables, want only CLINICCHAT_DATABASE_DSN", id, len(menv))
	}
	if v, ok := env[envName("migrate-on-start")]; !ok || v.value != "false" {
		t.Errorf("%s: with the migrate init container, set CLINICCHAT_MIGRATE_ON_START=false (the server only checks the schema)", id)
	}
}

// checkMetricsPort: the binary serves /metrics (--metrics-addr) on the
// container port named "metrics", which the scrape annotations name too;
// no Service exposes it (Prometheus scrapes the pods).
func checkMetricsPort(t *testing.T, r *rendered, id, w string, pod corev1.PodTemplateSpec, c corev1.Container) {
	if p := portNamed(c, "metrics"); p == nil || p.ContainerPort != metricsPort || p.Protocol != corev1.ProtocolTCP {
		t.Errorf("%s: ports %+v, want metrics %d/TCP", id, c.Ports, metricsPort)
	}
	v, ok := containerEnv(t, r, id, c)[envName("metrics-addr")]
	if !ok || !v.literal {
		t.Errorf("%s: %s is not set: nothing serves /metrics", id, envName("metrics-addr"))
	} else if _, port, err := net.SplitHostPort(v.value); err != nil || port != strconv.Itoa(metricsPort) {
		t.Errorf("%s: %s=%q, want the metrics port :%d", id, envName("metrics-addr"), v.value, metricsPort)
	}
	a := pod.Annotations
	if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != strconv.Itoa(metricsPort) || a["prometheus.io/path"] != "/metrics" {
		t.Errorf("%s: scrape annotations %v, want prometheus.io/scrape=true, port=%d, path=/metrics", id, a, metricsPort)
	}
	if svc := r.services[w]; svc != nil {
		for _, p := range svc.Spec.Ports {
			if p.Port == metricsPort || p.TargetPort.String() == "metrics" {
				t.Errorf("%s: Service %s exposes the metrics port", id, w)
			}
		}
	}
}

// portNamed is c's port of that name (nil: none).
func portNamed(c corev1.Container, name string) *corev1.ContainerPort {
	for i := range c.Ports {
		if c.Ports[i].Name == name {
			return &c.Ports[i]
		}
	}
	return nil
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// checkRequiredSettings checks the settings without which the binary does
// not start or does not do its job, and that each one points at something
// that exists in the overlay.
func checkRequiredSettings(t *testing.T, r *rendered, id, w string, fs *flag.FlagSet, env map[string]envValue, spec corev1.PodSpec, production bool) {
	t.Helper()
	c := spec.Containers[0]
	get := func(flagName string) (envValue, bool) { v, ok := env[envName(flagName)]; return v, ok }
	require := func(flagName string) (envValue, bool) {
		v, ok := get(flagName)
		if !ok {
			t.Errorf("%s: --%s is required: set %s", id, flagName, envName(flagName))
		}
		return v, ok
	}

	// The listen address matches the container port.
	listen := map[bool]string{true: "http-addr", false: "grpc-addr"}[w == "gateway"]
	if v, ok := require(listen); ok {
		if _, port, err := net.SplitHostPort(v.value); err != nil || port != strconv.Itoa(int(c.Ports[0].ContainerPort)) {
			t.Errorf("%s: %s=%q does not listen on the container port %d", id, envName(listen), v.value, c.Ports[0].ContainerPort)
		}
	}

	// Database: a stateful service reads its DSN from the Secret that the
	// overlay's CloudNativePG Cluster generates (<cluster>-app, key uri).
	if w != "gateway" {
		if v, ok := require("database-dsn"); ok {
			switch {
			case v.secret == nil:
				t.Errorf("%s: CLINICCHAT_DATABASE_DSN must come from a Secret, not a literal", id)
			case v.secret.Key != "uri" || !strings.HasSuffix(v.secret.Name, "-app"):
				t.Errorf("%s: CLINICCHAT_DATABASE_DSN from Secret %s key %s, want <cluster>-app key uri", id, v.secret.Name, v.secret.Key)
			case r.clusters[strings.TrimSuffix(v.secret.Name, "-app")] == nil:
				t.Errorf("%s: CLINICCHAT_DATABASE_DSN Secret %s: no CloudNativePG Cluster %s in the overlay", id, v.secret.Name, strings.TrimSuffix(v.secret.Name, "-app"))
			}
		}
	}

	// NATS: every URL is the in-cluster NATS client Service.
	if v, ok := require("nats-url"); ok {
		for _, raw := range strings.Split(v.value, ",") {
			u, err := url.Parse(strings.TrimSpace(raw))
			if err != nil || u.Scheme != "nats" {
				t.Errorf("%s: CLINICCHAT_NATS_URL entry %q is not a nats:// URL", id, raw)
				continue
			}
			checkServiceAddr(t, r, id, "CLINICCHAT_NATS_URL", u.Host)
		}
	}
	if v, ok := get("nats-replicas"); ok {
		n, _ := strconv.Atoi(v.value)
		if sts := r.statefulSets["nats"]; sts != nil && int32(n) > ptrOr(sts.Spec.Replicas, 1) {
			t.Errorf("%s: CLINICCHAT_NATS_REPLICAS=%d exceeds the %d NATS servers", id, n, ptrOr(sts.Spec.Replicas, 1))
		}
		if production && n != 3 {
			t.Errorf("%s: CLINICCHAT_NATS_REPLICAS=%d, production streams need 3", id, n)
		}
	} else if production && w != "gateway" {
		t.Errorf("%s: production needs CLINICCHAT_NATS_REPLICAS=3", id)
	}

	// Tokens: the issuer's JWKS in production; dev may use the dev key.
	_, jwks := get("jwks-url")
	_, iss := get("jwt-issuer")
	_, devKey := get("dev-signing-key-file")
	switch {
	case production && (!jwks || !iss):
		t.Errorf("%s: production needs CLINICCHAT_JWKS_URL and CLINICCHAT_JWT_ISSUER", id)
	case production && devKey:
		t.Errorf("%s: production must not use CLINICCHAT_DEV_SIGNING_KEY_FILE", id)
	case !(jwks && iss) && !devKey:
		t.Errorf("%s: set CLINICCHAT_JWKS_URL and CLINICCHAT_JWT_ISSUER, or CLINICCHAT_DEV_SIGNING_KEY_FILE", id)
	}
	// Dev mode (the dev token issuer and the demo practice): the dev
	// overlay's gateway runs it; production refuses it.
	for _, name := range []string{"dev", "seed-demo"} {
		v, set := get(name)
		on := set && v.value == "true"
		switch {
		case production && set:
			t.Errorf("%s: production must not set %s (dev mode)", id, envName(name))
		case !production && w == "gateway" && !on:
			t.Errorf("%s: the dev overlay runs in dev mode: set %s=true", id, envName(name))
		}
	}
	if v, ok := get("jwks-url"); ok {
		if u, err := url.Parse(v.value); err != nil || u.Scheme != "https" || u.Host == "" {
			t.Errorf("%s: CLINICCHAT_JWKS_URL=%q is not an https URL", id, v.value)
		}
	}

	// Peers: every address flag is set, and an in-cluster one names a
	// Service and port of the overlay.
	if w == "gateway" {
		if v, ok := require("grpc-addr"); ok {
			if _, port, err := net.SplitHostPort(v.value); err != nil || port != strconv.Itoa(grpcPort) {
				t.Errorf("%s: CLINICCHAT_GRPC_ADDR=%q (the gRPC edge) does not listen on the container port grpc %d", id, v.value, grpcPort)
			}
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.HasSuffix(f.Name, "-addr") || f.Name == listen || (w == "gateway" && f.Name == "grpc-addr") {
			return
		}
		if optionalFlags[f.Name] {
			if v, ok := get(f.Name); ok && v.value != "" {
				if _, _, err := net.SplitHostPort(v.value); err != nil {
					t.Errorf("%s: %s=%q is not host:port", id, envName(f.Name), v.value)
				}
			}
			return
		}
		v, ok := require(f.Name)
		if !ok {
			return
		}
		peer := strings.TrimSuffix(f.Name, "-addr")
		host, _, _ := net.SplitHostPort(v.value)
		if host != peer {
			t.Errorf("%s: %s=%q does not name the %s Service", id, envName(f.Name), v.value, peer)
		}
		checkServiceAddr(t, r, id, envName(f.Name), v.value)
	})

	// Files: each path lives on a volume of the right kind.
	for _, name := range []string{"dev-signing-key-file", "audit-signing-key-file", "nats-creds", "nats-tls-ca", "nats-tls-cert", "nats-tls-key",
		"tls-cert-file", "tls-key-file", "tls-ca-file", "upstream-tls-cert-file", "upstream-tls-key-file", "upstream-tls-ca-file"} {
		if v, ok := get(name); ok {
			checkMountedFile(t, id, envName(name), v.value, spec, r, "secret")
		}
	}
	switch w {
	case "audit":
		if v, ok := require("audit-signing-key-file"); ok && v.value == "" {
			t.Errorf("%s: CLINICCHAT_CHECKPOINT_SIGNER_KEY_FILE is empty", id)
		}
	case "attachment":
		if v, ok := require("blob-dir"); ok {
			checkMountedFile(t, id, "CLINICCHAT_BLOB_DIR", v.value+"/", spec, r, "pvc")
		}
	}
}

// checkMountedFile checks that p is on a volume mount of the server container whose volume
// is a Secret ("secret") or a writable PersistentVolumeClaim of the overlay
// ("pvc").
func checkMountedFile(t *testing.T, id, env, p string, spec corev1.PodSpec, r *rendered, kind string) {
	t.Helper()
	for _, m := range spec.Containers[0].VolumeMounts {
		if !strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/") {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name != m.Name {
				continue
			}
			switch kind {
			case "secret":
				if v.Secret == nil {
					t.Errorf("%s: %s=%s is on volume %s, which is not a Secret", id, env, p, v.Name)
				}
			case "pvc":
				if v.PersistentVolumeClaim == nil || r.pvcs[v.PersistentVolumeClaim.ClaimName] == nil || m.ReadOnly {
					t.Errorf("%s: %s=%s must be on a writable PersistentVolumeClaim of the overlay", id, env, p)
				}
			}
			return
		}
		t.Errorf("%s: volume mount %s has no volume", id, m.Name)
		return
	}
	t.Errorf("%s: %s=%s is on no volume mount (the root filesystem is read-only)", id, env, p)
}

// checkServiceAddr checks that host:port names a Service of the overlay
// with that port.
func checkServiceAddr(t *testing.T, r *rendered, id, env, hostport string) {
	t.Helper()
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Errorf("%s: %s=%q is not host:port", id, env, hostport)
		return
	}
	host = strings.TrimSuffix(strings.TrimSuffix(host, ".svc.cluster.local"), "."+r.namespace)
	svc := r.services[host]
	if svc == nil {
		t.Errorf("%s: %s=%q: no Service %q in the overlay", id, env, hostport, host)
		return
	}
	for _, p := range svc.Spec.Ports {
		if strconv.Itoa(int(p.Port)) == port {
			return
		}
	}
	t.Errorf("%s: %s=%q: Service %s has no port %s", id, env, hostport, host, port)
}

// checkService checks the workload's Service: same name, selects its pods,
// one named port routed to the container port.
func checkService(t *testing.T, r *rendered, w string, podLabels map[string]string, portName string, port int32) {
	t.Helper()
	svc := r.services[w]
	id := fmt.Sprintf("%s: Service %s", r.overlay, w)
	if svc == nil {
		t.Errorf("%s is missing", id)
		return
	}
	if len(svc.Spec.Selector) == 0 || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(podLabels)) {
		t.Errorf("%s: selector %v does not select the %s pods", id, svc.Spec.Selector, w)
	}
	wantPorts := 1
	if w == "gateway" {
		wantPorts = 2
		if len(svc.Spec.Ports) == 2 {
			if p := svc.Spec.Ports[1]; p.Name != "grpc" || p.Port != grpcPort || p.TargetPort != intstr.FromString("grpc") {
				t.Errorf("%s: second port %+v, want grpc %d -> container port grpc (the gRPC edge)", id, p, grpcPort)
			}
		}
	} else if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		// Clients resolve every ready pod and balance per call (grpcx.Dial).
		t.Errorf("%s: must be headless (clusterIP: None), so that gRPC clients reach every replica", id)
	}
	if len(svc.Spec.Ports) != wantPorts {
		t.Errorf("%s: want %d ports, got %d", id, wantPorts, len(svc.Spec.Ports))
		return
	}
	p := svc.Spec.Ports[0]
	if p.Name != portName || p.Port != port || !(p.TargetPort == intstr.FromString(portName) || p.TargetPort == intstr.FromInt32(port)) {
		t.Errorf("%s: port %+v, want %s %d -> container port %s", id, p, portName, port, portName)
	}
}

func checkHTTPProbe(t *testing.T, id string, p *corev1.Probe, wantPath string, c corev1.Container) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("%s: want an httpGet probe on %s", id, wantPath)
		return
	}
	if p.HTTPGet.Path != wantPath {
		t.Errorf("%s: path %q, want %q", id, p.HTTPGet.Path, wantPath)
	}
	if resolvePort(p.HTTPGet.Port, c) != httpPort {
		t.Errorf("%s: port %s is not the http port %d", id, p.HTTPGet.Port.String(), httpPort)
	}
}

func resolvePort(p intstr.IntOrString, c corev1.Container) int32 {
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	return -1
}

// checkPodSecurity: non-root, read-only root filesystem, no privilege
// escalation, every capability dropped, RuntimeDefault seccomp, requests and
// limits, a writable emptyDir /tmp. (The "restricted" Pod Security Standard
// and then some.)
func checkPodSecurity(t *testing.T, id string, spec corev1.PodSpec) {
	t.Helper()
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Errorf("%s: uses the host's namespaces", id)
	}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		cid := fmt.Sprintf("%s container %s", id, c.Name)
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("%s: no securityContext", cid)
			continue
		}
		if !ptrOr(sc.RunAsNonRoot, ptrOr(psc.RunAsNonRoot, false)) {
			t.Errorf("%s: runAsNonRoot is not true", cid)
		}
		if ptrOr(sc.RunAsUser, ptrOr(psc.RunAsUser, 1)) == 0 {
			t.Errorf("%s: runs as uid 0", cid)
		}
		if ptrOr(sc.AllowPrivilegeEscalation, true) {
			t.Errorf("%s: allowPrivilegeEscalation is not false", cid)
		}
		if ptrOr(sc.Privileged, false) {
			t.Errorf("%s: privileged", cid)
		}
		if !ptrOr(sc.ReadOnlyRootFilesystem, false) {
			t.Errorf("%s: readOnlyRootFilesystem is not true", cid)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
			t.Errorf("%s: capabilities must drop ALL and add none", cid)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil {
			seccomp = psc.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: seccompProfile is not RuntimeDefault", cid)
		}
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, okReq := c.Resources.Requests[res]
			lim, okLim := c.Resources.Limits[res]
			switch {
			case !okReq || !okLim:
				t.Errorf("%s: %s request and limit are both required", cid, res)
			case req.Cmp(lim) > 0:
				t.Errorf("%s: %s request %s above limit %s", cid, res, req.String(), lim.String())
			}
		}
		tmp := false
		for _, m := range c.VolumeMounts {
			if m.MountPath != "/tmp" {
				continue
			}
			for _, v := range spec.Volumes {
				tmp = tmp || (v.Name == m.Name && v.EmptyDir != nil)
			}
		}
		if !tmp {
			t.Errorf("%s: /tmp must be an emptyDir (the root filesystem is read-only)", cid)
		}
		for _, p := range c.Ports {
			if errs := validation.IsValidPortName(p.Name); p.Name != "" && len(errs) > 0 {
				t.Errorf("%s: port name %q: %v", cid, p.Name, errs)
			}
		}
	}
}

// checkImages: every workload runs <repository>/<workload>:<tag> from one
// repository and one release tag, set by the overlay (not "latest").
func checkImages(t *testing.T, r *rendered) {
	var repo, tag string
	for _, w := range workloads {
		d := r.deployments[w]
		if d == nil || len(d.Spec.Template.Spec.Containers) == 0 {
			continue
		}
		image := d.Spec.Template.Spec.Containers[0].Image
		name, ref := image, ""
		if i := strings.LastIndexAny(image, ":@"); i > strings.LastIndex(image, "/") {
			name, ref = image[:i], image[i+1:]
		}
		if path.Base(name) != w {
			t.Errorf("%s: Deployment %s runs image %q, want .../%s", r.overlay, w, image, w)
		}
		if ref == "" || ref == "latest" {
			t.Errorf("%s: Deployment %s image %q: the overlay must pin a tag or digest", r.overlay, w, image)
		}
		if repo == "" {
			repo, tag = path.Dir(name), ref
		}
		if path.Dir(name) != repo || ref != tag {
			t.Errorf("%s: Deployment %s image %q: want %s/%s:%s like the others", r.overlay, w, image, repo, w, tag)
		}
	}
}

// checkSharedSettings: a setting that several binaries read must have one
// value, or they would disagree (e.g. whether a sensitive message is locked).
func checkSharedSettings(t *testing.T, r *rendered) {
	for _, name := range []string{"step-up-window", "nats-url", "jwks-url", "jwt-issuer", "jwt-audience", "nats-replicas"} {
		values := map[string][]string{}
		for _, w := range workloads {
			d := r.deployments[w]
			if d == nil {
				continue
			}
			if v, ok := containerEnv(t, r, w, d.Spec.Template.Spec.Containers[0])[envName(name)]; ok && v.literal {
				values[v.value] = append(values[v.value], w)
			}
		}
		if len(values) > 1 {
			t.Errorf("%s: %s differs between workloads: %v", r.overlay, envName(name), values)
		}
	}
}

// ---- NATS -----------------------------------------------------------------

func checkNATS(t *testing.T, r *rendered, production bool) {
	sts := r.statefulSets["nats"]
	if sts == nil {
		t.Fatalf("%s: no NATS StatefulSet", r.overlay)
	}
	id := r.overlay + ": StatefulSet nats"
	replicas := ptrOr(sts.Spec.Replicas, 1)
	if replicas != 3 {
		t.Errorf("%s: %d servers, want a JetStream cluster of 3", id, replicas)
	}
	if sts.Spec.Selector == nil || !selects(sts.Spec.Selector, sts.Spec.Template.Labels) {
		t.Errorf("%s: selector does not match the pod template", id)
	}
	checkPodSecurity(t, id, sts.Spec.Template.Spec)

	headless := r.services[sts.Spec.ServiceName]
	if headless == nil || headless.Spec.ClusterIP != corev1.ClusterIPNone || !headless.Spec.PublishNotReadyAddresses {
		t.Errorf("%s: serviceName %q must be a headless Service publishing not-ready addresses", id, sts.Spec.ServiceName)
	}
	client := r.services["nats"]
	if client == nil || !labels.SelectorFromSet(client.Spec.Selector).Matches(labels.Set(sts.Spec.Template.Labels)) {
		t.Errorf("%s: the client Service nats must select the NATS pods", id)
	}

	// nats.conf: cluster routes to every server by its stable name, and
	// JetStream on the per-server volume.
	var conf, storeDir string
	c := sts.Spec.Template.Spec.Containers[0]
	for _, v := range sts.Spec.Template.Spec.Volumes {
		if v.ConfigMap == nil {
			continue
		}
		cm := r.configMaps[v.ConfigMap.Name]
		if cm == nil {
			t.Errorf("%s: volume %s: ConfigMap %s is not in the overlay", id, v.Name, v.ConfigMap.Name)
			continue
		}
		conf = cm.Data["nats.conf"]
	}
	if conf == "" {
		t.Fatalf("%s: no nats.conf ConfigMap volume", id)
	}
	for i := range replicas {
		route := fmt.Sprintf("nats://%s-%d.%s:6222", sts.Name, i, sts.Spec.ServiceName)
		if !strings.Contains(conf, route) {
			t.Errorf("%s: nats.conf has no cluster route %s", id, route)
		}
	}
	for _, line := range strings.Split(conf, "\n") {
		if f := strings.Fields(strings.TrimSpace(line)); len(f) == 2 && f[0] == "store_dir:" {
			storeDir = f[1]
		}
	}
	onPVC := false
	for _, m := range c.VolumeMounts {
		for _, tmpl := range sts.Spec.VolumeClaimTemplates {
			onPVC = onPVC || (m.Name == tmpl.Name && strings.HasPrefix(storeDir, m.MountPath+"/"))
		}
	}
	if storeDir == "" || !onPVC {
		t.Errorf("%s: JetStream store_dir %q must be on a volumeClaimTemplate", id, storeDir)
	}
	for _, want := range []string{"4222", "6222", "8222"} {
		found := false
		for _, p := range headless.Spec.Ports {
			found = found || strconv.Itoa(int(p.Port)) == want
		}
		if !found {
			t.Errorf("%s: headless Service lacks port %s", id, want)
		}
	}
	if r.pdbs["nats"] == nil {
		t.Errorf("%s: no PodDisruptionBudget for the NATS servers", id)
	}
}

// ---- PostgreSQL (CloudNativePG) ---------------------------------------------

// cnpgSpecFields are the postgresql.cnpg.io/v1 ClusterSpec fields this
// project may use; anything else is probably a typo the API server would
// reject.
var cnpgSpecFields = []string{
	"instances", "imageName", "imageCatalogRef", "primaryUpdateStrategy", "primaryUpdateMethod",
	"bootstrap", "storage", "walStorage", "resources", "affinity", "postgresql",
	"managed", "monitoring", "backup", "description", "inheritedMetadata",
	"enableSuperuserAccess", "superuserSecret", "certificates", "minSyncReplicas",
	"maxSyncReplicas", "startDelay", "stopDelay", "switchoverDelay", "failoverDelay",
	"smartShutdownTimeout", "priorityClassName", "schedulerName", "topologySpreadConstraints",
	"enablePDB", "env", "envFrom", "plugins", "projectedVolumeTemplate", "tablespaces",
	"replica", "externalClusters", "serviceAccountTemplate", "nodeMaintenanceWindow",
	"logLevel", "seccompProfile", "ephemeralVolumeSource", "ephemeralVolumesSizeLimit",
	"postgresUID", "postgresGID", "livenessProbeTimeout", "probes",
}

func checkClusters(t *testing.T, r *rendered, production bool) {
	used := map[string]bool{}
	for _, w := range grpcServices {
		used[w+"-db"] = true
	}
	for _, name := range sortedKeys(r.clusters) {
		u := r.clusters[name]
		id := fmt.Sprintf("%s: Cluster %s", r.overlay, name)
		if !used[name] {
			t.Errorf("%s: no service uses it", id)
		}
		spec, ok := u.Object["spec"].(map[string]any)
		if !ok {
			t.Errorf("%s: no spec", id)
			continue
		}
		for k := range spec {
			if !slices.Contains(cnpgSpecFields, k) {
				t.Errorf("%s: unknown spec field %q", id, k)
			}
		}
		instances, ok := spec["instances"].(int64)
		switch {
		case !ok || instances < 1:
			t.Errorf("%s: spec.instances %v must be a positive integer", id, spec["instances"])
		case production && instances < 2:
			t.Errorf("%s: %d instances: production needs a standby to fail over to", id, instances)
		}
		size := unstructuredString(u.Object, "spec", "storage", "size")
		if q, err := resource.ParseQuantity(size); err != nil || q.Sign() <= 0 {
			t.Errorf("%s: spec.storage.size %q is not a positive quantity", id, size)
		}
		db := unstructuredString(u.Object, "spec", "bootstrap", "initdb", "database")
		owner := unstructuredString(u.Object, "spec", "bootstrap", "initdb", "owner")
		if db == "" || owner == "" {
			t.Errorf("%s: spec.bootstrap.initdb needs database and owner (they name the generated %s-app Secret's DSN)", id, name)
		}
		if res, ok := spec["resources"]; ok {
			b, _ := json.Marshal(res)
			var rr corev1.ResourceRequirements
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&rr); err != nil {
				t.Errorf("%s: spec.resources: %v", id, err)
			}
		}
	}
	for name := range used {
		if r.clusters[name] == nil {
			t.Errorf("%s: no CloudNativePG Cluster %s", r.overlay, name)
		}
	}
}

// unstructuredString is the string at fields in obj, or "".
func unstructuredString(obj map[string]any, fields ...string) string {
	var cur any = obj
	for _, f := range fields {
		m, ok := cur.(map[string]any)
		if !ok {
			return ""
		}
		cur = m[f]
	}
	s, _ := cur.(string)
	return s
}

// ---- edge ---------------------------------------------------------------------

func checkIngress(t *testing.T, r *rendered, production bool) {
	ing := r.ingresses["gateway"]
	if ing == nil {
		t.Fatalf("%s: no Ingress gateway", r.overlay)
	}
	id := r.overlay + ": Ingress gateway"
	for _, rule := range ing.Spec.Rules {
		if errs := validation.IsDNS1123Subdomain(rule.Host); len(errs) > 0 {
			t.Errorf("%s: host %q: %v", id, rule.Host, errs)
		}
		if rule.HTTP == nil {
			t.Errorf("%s: rule without http paths", id)
			continue
		}
		for _, p := range rule.HTTP.Paths {
			b := p.Backend.Service
			if b == nil || b.Name != "gateway" || (b.Port.Name != "http" && b.Port.Number != httpPort) {
				t.Errorf("%s: path %s must route to Service gateway port http", id, p.Path)
			}
		}
	}
	if production && len(ing.Spec.TLS) == 0 {
		t.Errorf("%s: production serves HTTPS: spec.tls is required", id)
	}

	// The public gRPC edge: gRPC to the gateway's grpc port, TLS in production.
	grpcIng := r.ingresses["gateway-grpc"]
	if grpcIng == nil {
		t.Fatalf("%s: no Ingress gateway-grpc (the public gRPC edge)", r.overlay)
	}
	id = r.overlay + ": Ingress gateway-grpc"
	if bp := grpcIng.Annotations["nginx.ingress.kubernetes.io/backend-protocol"]; bp != "GRPC" && bp != "GRPCS" {
		t.Errorf("%s: needs nginx.ingress.kubernetes.io/backend-protocol: GRPC (GRPCS when the gateway serves TLS)", id)
	}
	for _, rule := range grpcIng.Spec.Rules {
		if rule.HTTP == nil || len(rule.HTTP.Paths) == 0 {
			t.Errorf("%s: rule without paths", id)
			continue
		}
		for _, p := range rule.HTTP.Paths {
			if b := p.Backend.Service; b == nil || b.Name != "gateway" || (b.Port.Name != "grpc" && b.Port.Number != grpcPort) {
				t.Errorf("%s: path %s must route to Service gateway port grpc", id, p.Path)
			}
		}
	}
	if production {
		hosts := map[string]bool{}
		for _, tls := range grpcIng.Spec.TLS {
			for _, h := range tls.Hosts {
				hosts[h] = tls.SecretName != ""
			}
		}
		for _, rule := range grpcIng.Spec.Rules {
			if !hosts[rule.Host] {
				t.Errorf("%s: production serves gRPC over TLS: host %q needs a spec.tls entry with a Secret", id, rule.Host)
			}
		}
	}
	if production {
		pvc := r.pvcs["attachment-blobs"]
		if pvc == nil || !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteMany) {
			t.Errorf("%s: attachment-blobs must be ReadWriteMany (several attachment replicas)", r.overlay)
		}
	}
}

// ---- production extras ----------------------------------------------------------

func checkHPAs(t *testing.T, r *rendered) {
	for _, w := range workloads {
		h := r.hpas[w]
		id := fmt.Sprintf("%s: HorizontalPodAutoscaler %s", r.overlay, w)
		if h == nil {
			t.Errorf("%s is missing", id)
			continue
		}
		ref := h.Spec.ScaleTargetRef
		if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || r.deployments[ref.Name] == nil || ref.Name != w {
			t.Errorf("%s: scaleTargetRef %+v, want apps/v1 Deployment %s", id, ref, w)
		}
		minR := ptrOr(h.Spec.MinReplicas, 1)
		if minR < 2 || h.Spec.MaxReplicas < minR {
			t.Errorf("%s: replicas %d..%d, want a floor of at least 2", id, minR, h.Spec.MaxReplicas)
		}
		if d := r.deployments[w]; d != nil {
			if n := ptrOr(d.Spec.Replicas, 1); n < minR || n > h.Spec.MaxReplicas {
				t.Errorf("%s: Deployment replicas %d outside %d..%d", id, n, minR, h.Spec.MaxReplicas)
			}
			for _, m := range h.Spec.Metrics {
				if m.Resource != nil && m.Resource.Target.Type == "Utilization" {
					if _, ok := d.Spec.Template.Spec.Containers[0].Resources.Requests[m.Resource.Name]; !ok {
						t.Errorf("%s: scales on %s utilization, but the container requests no %s", id, m.Resource.Name, m.Resource.Name)
					}
				}
			}
		}
		if len(h.Spec.Metrics) == 0 {
			t.Errorf("%s: no metrics", id)
		}
	}
}

func checkPDBs(t *testing.T, r *rendered) {
	for _, w := range workloads {
		p := r.pdbs[w]
		id := fmt.Sprintf("%s: PodDisruptionBudget %s", r.overlay, w)
		d := r.deployments[w]
		if p == nil || d == nil {
			t.Errorf("%s is missing", id)
			continue
		}
		if p.Spec.Selector == nil || !selects(p.Spec.Selector, d.Spec.Template.Labels) {
			t.Errorf("%s: selector does not select the %s pods", id, w)
		}
		// A budget that allows no disruption at the minimum scale blocks
		// every node drain.
		replicas := int(ptrOr(d.Spec.Replicas, 1))
		if h := r.hpas[w]; h != nil {
			replicas = int(ptrOr(h.Spec.MinReplicas, 1))
		}
		if p.Spec.MinAvailable != nil {
			n, err := intstr.GetScaledValueFromIntOrPercent(p.Spec.MinAvailable, replicas, true)
			if err != nil || n >= replicas || n < 1 {
				t.Errorf("%s: minAvailable %s with %d replicas must keep at least one and allow a drain", id, p.Spec.MinAvailable.String(), replicas)
			}
		} else if p.Spec.MaxUnavailable == nil {
			t.Errorf("%s: needs minAvailable or maxUnavailable", id)
		}
	}
}

func selects(sel *metav1.LabelSelector, lbls map[string]string) bool {
	if sel == nil {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return false
	}
	return s.Matches(labels.Set(lbls))
}

// TestREADMEDocumentsEveryFlag keeps the configuration reference complete:
// every flag of every binary appears in README.md as its environment variable.
func TestREADMEDocumentsEveryFlag(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range workloads {
		flagsFor(w).VisitAll(func(f *flag.Flag) {
			if !bytes.Contains(readme, []byte("`"+envName(f.Name)+"`")) {
				t.Errorf("README.md does not document %s's --%s (%s)", w, f.Name, envName(f.Name))
			}
		})
	}
}

// goRuntimeEnv are the variables the Go runtime itself reads, with a check of
// their value as the runtime parses it (GOGC: a percent or "off"; GOMEMLIMIT:
// bytes with an optional B, KiB, MiB, GiB or TiB suffix).
var goRuntimeEnv = map[string]func(string) bool{
	"GOGC": func(v string) bool {
		n, err := strconv.Atoi(v)
		return v == "off" || (err == nil && n >= 0)
	},
	"GOMEMLIMIT": regexp.MustCompile(`^[0-9]+(B|KiB|MiB|GiB|TiB)?$`).MatchString,
	// name=value settings, comma-separated; values as the runtime parses
	// its own (a number) or as a setting of the godebug package takes them.
	"GODEBUG": regexp.MustCompile(`^[a-z0-9]+=[a-z0-9.]+(,[a-z0-9]+=[a-z0-9.]+)*$`).MatchString,
}
