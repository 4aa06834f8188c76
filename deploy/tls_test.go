package deploy_test

import (
	"fmt"
	"path"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// checkServiceTLS: in production every workload gets a certificate of the
// cluster-internal CA from cert-manager and its TLS flags: every service
// serves mutual TLS for its Service's name, and the gateway calls them with
// its client certificate, so no bearer token crosses the network in clear.
func checkServiceTLS(t *testing.T, r *rendered) {
	ca := checkCAChain(t, r)
	for _, w := range workloads {
		d := r.deployments[w]
		if d == nil {
			continue
		}
		id := fmt.Sprintf("%s: Deployment %s", r.overlay, w)
		spec := d.Spec.Template.Spec
		c := spec.Containers[0]
		env := containerEnv(t, r, id, c)
		prefix := ""
		if w == "gateway" {
			prefix = "upstream-"
		}
		// The three files, from one Secret volume, under cert-manager's keys.
		var secret string
		for flagName, key := range map[string]string{"tls-cert-file": "tls.crt", "tls-key-file": "tls.key", "tls-ca-file": "ca.crt"} {
			name := envName(prefix + flagName)
			v, ok := env[name]
			if !ok || !v.literal {
				t.Errorf("%s: %s is not set: the workload would talk in plaintext", id, name)
				continue
			}
			if path.Base(v.value) != key {
				t.Errorf("%s: %s=%s, want the Secret's key %s", id, name, v.value, key)
			}
			s := secretVolumeOf(spec, v.value)
			if s == "" {
				t.Errorf("%s: %s=%s is not on a Secret volume", id, name, v.value)
			} else if secret != "" && s != secret {
				t.Errorf("%s: the TLS files come from two Secrets, %s and %s", id, secret, s)
			}
			secret = s
		}
		if secret == "" {
			continue
		}
		cert := certificateFor(r, secret)
		if cert == nil {
			t.Errorf("%s: no cert-manager Certificate writes Secret %s", id, secret)
			continue
		}
		issuer, _, _ := unstructured.NestedString(cert.Object, "spec", "issuerRef", "name")
		if issuer != ca {
			t.Errorf("%s: Certificate %s is issued by %q, want the cluster CA issuer %q", id, cert.GetName(), issuer, ca)
		}
		usages, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "usages")
		dns, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
		if !slices.Contains(usages, "client auth") {
			t.Errorf("%s: Certificate %s lacks the client auth usage (mutual TLS)", id, cert.GetName())
		}
		if w == "gateway" {
			checkGatewayTLS(t, r, id, env, c, secret, usages, dns)
			continue
		}
		if !slices.Contains(usages, "server auth") {
			t.Errorf("%s: Certificate %s lacks the server auth usage", id, cert.GetName())
		}
		// Clients dial <service>:9090: the name must be in the certificate.
		if r.services[w] == nil || !slices.Contains(dns, w) || !slices.Contains(dns, w+"."+r.namespace+".svc") {
			t.Errorf("%s: Certificate %s dnsNames %v must hold the Service names %s and %s.%s.svc", id, cert.GetName(), dns, w, w, r.namespace)
		}
		if v, ok := env[envName("grpc-health-addr")]; !ok || v.value == "" {
			t.Errorf("%s: with TLS the kubelet's gRPC probes need CLINICCHAT_GRPC_HEALTH_ADDR", id)
		}
	}
}

// checkCAChain checks the self-signed root, the CA Certificate and the CA
// Issuer, and returns the CA Issuer's name.
func checkCAChain(t *testing.T, r *rendered) string {
	t.Helper()
	for name, iss := range r.issuers {
		secret, ok, _ := unstructured.NestedString(iss.Object, "spec", "ca", "secretName")
		if !ok {
			continue
		}
		cert := certificateFor(r, secret)
		if cert == nil {
			t.Errorf("%s: Issuer %s: no Certificate writes its CA Secret %s", r.overlay, name, secret)
			return name
		}
		if isCA, _, _ := unstructured.NestedBool(cert.Object, "spec", "isCA"); !isCA {
			t.Errorf("%s: Certificate %s is not a CA (isCA)", r.overlay, cert.GetName())
		}
		root, _, _ := unstructured.NestedString(cert.Object, "spec", "issuerRef", "name")
		if ri := r.issuers[root]; ri == nil {
			t.Errorf("%s: the CA Certificate's issuer %s is not in the overlay", r.overlay, root)
		} else if _, ok, _ := unstructured.NestedMap(ri.Object, "spec", "selfSigned"); !ok {
			t.Errorf("%s: the CA Certificate's issuer %s is not self-signed", r.overlay, root)
		}
		return name
	}
	t.Errorf("%s: no cert-manager CA Issuer in the overlay", r.overlay)
	return ""
}

func certificateFor(r *rendered, secret string) *unstructured.Unstructured {
	for _, c := range r.certificates {
		if s, _, _ := unstructured.NestedString(c.Object, "spec", "secretName"); s == secret {
			return c
		}
	}
	return nil
}

// secretVolumeOf is the Secret whose volume holds file p in the server
// container ("" when none).
func secretVolumeOf(spec corev1.PodSpec, p string) string {
	for _, m := range spec.Containers[0].VolumeMounts {
		if path.Dir(p) != path.Clean(m.MountPath) {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.Secret != nil {
				return v.Secret.SecretName
			}
		}
	}
	return ""
}

// checkGatewayTLS: the gateway serves its HTTP listener and gRPC edge over
// TLS with its certificate (from the same Secret), the Ingresses re-encrypt
// to it, and the kubelet probes it over HTTPS: a bearer token never crosses
// the cluster network in clear, not even from the Ingress to the pod.
func checkGatewayTLS(t *testing.T, r *rendered, id string, env map[string]envValue, c corev1.Container, secret string, usages, dns []string) {
	t.Helper()
	spec := r.deployments["gateway"].Spec.Template.Spec
	for flagName, key := range map[string]string{"http-tls-cert-file": "tls.crt", "http-tls-key-file": "tls.key"} {
		v, ok := env[envName(flagName)]
		switch {
		case !ok || !v.literal:
			t.Errorf("%s: %s is not set: the Ingress would reach the gateway in plaintext", id, envName(flagName))
		case path.Base(v.value) != key || secretVolumeOf(spec, v.value) != secret:
			t.Errorf("%s: %s=%s, want %s of the Secret %s", id, envName(flagName), v.value, key, secret)
		}
	}
	if !slices.Contains(usages, "server auth") || !slices.Contains(dns, "gateway") || !slices.Contains(dns, "gateway."+r.namespace+".svc") {
		t.Errorf("%s: the gateway's Certificate needs server auth and the names gateway, gateway.%s.svc (usages %v, dnsNames %v)", id, r.namespace, usages, dns)
	}
	for name, p := range map[string]*corev1.Probe{"startupProbe": c.StartupProbe, "livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe} {
		if p != nil && (p.HTTPGet == nil || p.HTTPGet.Scheme != corev1.URISchemeHTTPS) {
			t.Errorf("%s: %s must use scheme HTTPS (the listener serves TLS)", id, name)
		}
	}
	for ing, want := range map[string]string{"gateway": "HTTPS", "gateway-grpc": "GRPCS"} {
		if i := r.ingresses[ing]; i == nil || i.Annotations["nginx.ingress.kubernetes.io/backend-protocol"] != want {
			t.Errorf("%s: Ingress %s must re-encrypt to the gateway: nginx.ingress.kubernetes.io/backend-protocol: %s", r.overlay, ing, want)
		}
	}
}
