package deploy_test

import (
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// endpoint is a pod (or an address outside the cluster) that traffic can
// come from or go to, as NetworkPolicy sees it.
type endpoint struct {
	name   string
	ns     string
	labels map[string]string
	ports  map[string]int32 // named container ports
	ip     net.IP           // outside the cluster
}

func (e endpoint) String() string { return e.name }

// Pods outside the overlay's namespace that the policies must let in or out.
// Their namespaces and labels are the ones the policies document.
var (
	kubeDNS       = endpoint{name: "kube-dns", ns: "kube-system", labels: map[string]string{"k8s-app": "kube-dns"}}
	ingressNginx  = endpoint{name: "ingress-nginx", ns: "ingress-nginx", labels: map[string]string{"app.kubernetes.io/name": "ingress-nginx"}}
	prometheus    = endpoint{name: "prometheus", ns: "monitoring", labels: map[string]string{"app.kubernetes.io/name": "prometheus"}}
	cnpgOperator  = endpoint{name: "cnpg-operator", ns: "cnpg-system", labels: map[string]string{"app.kubernetes.io/name": "cloudnative-pg"}}
	internet      = endpoint{name: "internet (203.0.113.10)", ip: net.ParseIP("203.0.113.10")}
	tcp, udp      = corev1.ProtocolTCP, corev1.ProtocolUDP
	policiedPorts = []int32{grpcPort, httpPort, metricsPort, 4222, 6222, 8222, 5432, 8000}
)

// endpoints are the overlay's own pods: the workloads, the NATS servers and
// the CloudNativePG instances (labelled the way the operator labels them).
func (r *rendered) endpoints() []endpoint {
	var eps []endpoint
	for _, name := range sortedKeys(r.deployments) {
		eps = append(eps, podEndpoint(name, r.namespace, r.deployments[name].Spec.Template))
	}
	for _, name := range sortedKeys(r.statefulSets) {
		eps = append(eps, podEndpoint(name, r.namespace, r.statefulSets[name].Spec.Template))
	}
	for _, name := range sortedKeys(r.clusters) {
		eps = append(eps, endpoint{
			name: name, ns: r.namespace,
			labels: map[string]string{"cnpg.io/cluster": name, "cnpg.io/podRole": "instance", "cnpg.io/instanceRole": "primary"},
			ports:  map[string]int32{"postgresql": 5432, "metrics": 9187, "status": 8000},
		})
	}
	return eps
}

func podEndpoint(name, ns string, tmpl corev1.PodTemplateSpec) endpoint {
	e := endpoint{name: name, ns: ns, labels: tmpl.Labels, ports: map[string]int32{}}
	for _, c := range tmpl.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name != "" {
				e.ports[p.Name] = p.ContainerPort
			}
		}
	}
	return e
}

// allowed evaluates the overlay's NetworkPolicies the way the API defines
// them: a connection needs the source's egress and the destination's
// ingress; a pod selected by no policy of a direction is open in it.
// Policies only govern pods of the overlay's namespace.
func (r *rendered) allowed(src, dst endpoint, port int32, proto corev1.Protocol) bool {
	return r.direction(src, dst, dst, port, proto, networkingv1.PolicyTypeEgress) &&
		r.direction(dst, src, dst, port, proto, networkingv1.PolicyTypeIngress)
}

// direction: may subject send to (egress) / receive from (ingress) peer on
// port of dst?
func (r *rendered) direction(subject, peer, dst endpoint, port int32, proto corev1.Protocol, typ networkingv1.PolicyType) bool {
	if subject.ip != nil || subject.ns != r.namespace {
		return true
	}
	isolated := false
	for _, name := range sortedKeys(r.policies) {
		p := r.policies[name]
		if !selects(&p.Spec.PodSelector, subject.labels) || !hasType(p, typ) {
			continue
		}
		isolated = true
		if typ == networkingv1.PolicyTypeEgress {
			for _, rule := range p.Spec.Egress {
				if peersMatch(rule.To, p.Namespace, peer) && portsMatch(rule.Ports, dst, port, proto) {
					return true
				}
			}
		} else {
			for _, rule := range p.Spec.Ingress {
				if peersMatch(rule.From, p.Namespace, peer) && portsMatch(rule.Ports, dst, port, proto) {
					return true
				}
			}
		}
	}
	return !isolated
}

// hasType applies the API's default policyTypes: Ingress always, Egress
// when the policy has egress rules.
func hasType(p *networkingv1.NetworkPolicy, typ networkingv1.PolicyType) bool {
	if len(p.Spec.PolicyTypes) > 0 {
		return slices.Contains(p.Spec.PolicyTypes, typ)
	}
	return typ == networkingv1.PolicyTypeIngress || len(p.Spec.Egress) > 0
}

func peersMatch(peers []networkingv1.NetworkPolicyPeer, policyNS string, e endpoint) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		if peerMatches(p, policyNS, e) {
			return true
		}
	}
	return false
}

func peerMatches(p networkingv1.NetworkPolicyPeer, policyNS string, e endpoint) bool {
	if p.IPBlock != nil {
		if e.ip == nil {
			return false // pod traffic is matched by selectors
		}
		_, cidr, err := net.ParseCIDR(p.IPBlock.CIDR)
		if err != nil || !cidr.Contains(e.ip) {
			return false
		}
		for _, ex := range p.IPBlock.Except {
			if _, exc, err := net.ParseCIDR(ex); err == nil && exc.Contains(e.ip) {
				return false
			}
		}
		return true
	}
	if e.ip != nil {
		return false
	}
	if p.NamespaceSelector == nil {
		if e.ns != policyNS {
			return false
		}
	} else if !selects(p.NamespaceSelector, map[string]string{"kubernetes.io/metadata.name": e.ns}) {
		return false
	}
	return p.PodSelector == nil || selects(p.PodSelector, e.labels)
}

func portsMatch(ports []networkingv1.NetworkPolicyPort, dst endpoint, port int32, proto corev1.Protocol) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if ptrOr(p.Protocol, tcp) != proto {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.String:
			if dst.ports[p.Port.StrVal] == port {
				return true
			}
		case port >= p.Port.IntVal && port <= ptrOr(p.EndPort, p.Port.IntVal):
			return true
		}
	}
	return false
}

// checkNetworkPolicies derives the allowed connections from the rendered
// workloads themselves (their *_ADDR settings, NATS URL, database Secret)
// and compares them with what the policies allow, for every pair of the
// overlay's pods on every port that anything listens on: a missing path
// and an extra path both fail.
func checkNetworkPolicies(t *testing.T, r *rendered) {
	if len(r.policies) == 0 {
		t.Fatalf("%s: no NetworkPolicies", r.overlay)
	}
	denyAll := false
	for _, p := range r.policies {
		denyAll = denyAll || (len(p.Spec.PodSelector.MatchLabels) == 0 && len(p.Spec.PodSelector.MatchExpressions) == 0 &&
			hasType(p, networkingv1.PolicyTypeIngress) && hasType(p, networkingv1.PolicyTypeEgress) &&
			len(p.Spec.Ingress) == 0 && len(p.Spec.Egress) == 0)
	}
	if !denyAll {
		t.Errorf("%s: no default-deny NetworkPolicy (empty podSelector, Ingress and Egress, no rules)", r.overlay)
	}

	eps := r.endpoints()
	byName := map[string]endpoint{}
	for _, e := range eps {
		byName[e.name] = e
	}
	for _, name := range sortedKeys(r.policies) {
		p := r.policies[name]
		n := 0
		for _, e := range eps {
			if selects(&p.Spec.PodSelector, e.labels) {
				n++
			}
		}
		if n == 0 {
			t.Errorf("%s: NetworkPolicy %s selects no pod", r.overlay, name)
		}
	}

	// What the architecture needs, from the workloads' configuration.
	type conn struct {
		src, dst string
		port     int32
	}
	want := map[conn]bool{}
	external := map[string][]int32{} // workload -> ports it reaches outside
	for _, w := range workloads {
		d := r.deployments[w]
		if d == nil {
			continue
		}
		env := containerEnv(t, r, w, d.Spec.Template.Spec.Containers[0])
		for name, v := range env {
			switch {
			case v.secret != nil && name == envName("database-dsn"):
				db := strings.TrimSuffix(v.secret.Name, "-app")
				want[conn{w, db, 5432}] = true
			case name == envName("nats-url"):
				for _, raw := range strings.Split(v.value, ",") {
					if u, err := url.Parse(strings.TrimSpace(raw)); err == nil {
						want[conn{w, "nats", int32(atoi(u.Port()))}] = true
					}
				}
			case name == envName("jwks-url"):
				if u, err := url.Parse(v.value); err == nil {
					external[w] = append(external[w], int32(atoiOr(u.Port(), 443)))
				}
			case strings.HasSuffix(name, "_ADDR") && !slices.Contains([]string{envName("grpc-addr"), envName("http-addr"),
				envName("metrics-addr"), envName("debug-addr"), envName("grpc-health-addr")}, name):
				host, port, err := net.SplitHostPort(v.value)
				if err != nil {
					continue
				}
				if _, inCluster := r.deployments[host]; inCluster {
					want[conn{w, host, int32(atoi(port))}] = true
				} else {
					external[w] = append(external[w], int32(atoi(port)))
				}
			}
		}
	}
	// The clusters' own traffic: NATS routes, PostgreSQL replication and
	// the instance manager.
	want[conn{"nats", "nats", 6222}] = true
	for name := range r.clusters {
		want[conn{name, name, 5432}] = true
		want[conn{name, name, 8000}] = true
	}

	for _, src := range eps {
		for _, dst := range eps {
			for _, port := range policiedPorts {
				// Each side on its own, so that a rule opened on one side
				// only (and so harmless today) fails as well.
				w := want[conn{src.name, dst.name, port}]
				verb := map[bool]string{true: "allow", false: "deny"}[w]
				if got := r.direction(src, dst, dst, port, tcp, networkingv1.PolicyTypeEgress); got != w {
					t.Errorf("%s: egress policies of %s should %s %s -> %s:%d", r.overlay, src, verb, src, dst, port)
				}
				if got := r.direction(dst, src, dst, port, tcp, networkingv1.PolicyTypeIngress); got != w {
					t.Errorf("%s: ingress policies of %s should %s %s -> %s:%d", r.overlay, dst, verb, src, dst, port)
				}
			}
		}
		if !r.allowed(src, kubeDNS, 53, udp) || !r.allowed(src, kubeDNS, 53, tcp) {
			t.Errorf("%s: %s cannot resolve names (kube-dns 53)", r.overlay, src)
		}
		if r.allowed(src, internet, 80, tcp) {
			t.Errorf("%s: %s may reach the internet on port 80", r.overlay, src)
		}
		for _, port := range external[src.name] {
			if !r.allowed(src, internet, port, tcp) {
				t.Errorf("%s: %s cannot reach its external endpoint on port %d", r.overlay, src, port)
			}
		}
	}

	// From outside the namespace: the ingress controller and Prometheus
	// reach the gateway only; the operator reaches its instances' status port.
	for _, dst := range eps {
		wantEdge := dst.name == "gateway"
		if got := r.allowed(ingressNginx, dst, httpPort, tcp); got != wantEdge {
			t.Errorf("%s: ingress controller -> %s:%d allowed=%v, want %v", r.overlay, dst, httpPort, got, wantEdge)
		}
		// The gateway's gRPC edge is public too (its own port 9090).
		if got := r.allowed(ingressNginx, dst, grpcPort, tcp); got != wantEdge {
			t.Errorf("%s: ingress controller -> %s:%d allowed=%v, want %v", r.overlay, dst, grpcPort, got, wantEdge)
		}
		for _, port := range []int32{4222, 5432} {
			if r.allowed(ingressNginx, dst, port, tcp) {
				t.Errorf("%s: ingress controller may reach %s:%d", r.overlay, dst, port)
			}
		}
		if dst.name == "gateway" && !r.allowed(prometheus, dst, httpPort, tcp) {
			t.Errorf("%s: Prometheus cannot scrape the gateway's /metrics", r.overlay)
		}
		// Every workload's operator port, from Prometheus only.
		_, isWorkload := r.deployments[dst.name]
		if got := r.allowed(prometheus, dst, metricsPort, tcp); got != isWorkload {
			t.Errorf("%s: Prometheus -> %s:%d allowed=%v, want %v", r.overlay, dst, metricsPort, got, isWorkload)
		}
		if r.allowed(ingressNginx, dst, metricsPort, tcp) {
			t.Errorf("%s: ingress controller may reach %s:%d (metrics)", r.overlay, dst, metricsPort)
		}
		_, isDB := r.clusters[dst.name]
		for _, port := range []int32{8000, 5432} {
			if got := r.allowed(cnpgOperator, dst, port, tcp); got != isDB {
				t.Errorf("%s: CloudNativePG operator -> %s:%d allowed=%v, want %v", r.overlay, dst, port, got, isDB)
			}
		}
	}
	for _, w := range workloads {
		if _, ok := byName[w]; !ok {
			t.Errorf("%s: workload %s has no pods to check", r.overlay, w)
		}
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func atoiOr(s string, def int) int {
	if s == "" {
		return def
	}
	return atoi(s)
}
