package deploy_test

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/conf"
	corev1 "k8s.io/api/core/v1"

	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// TestNATSTLSAndUsers renders every overlay and checks the NATS component's
// security: nats.conf serves clients and routes over TLS from the Secret
// nats-tls; it declares a user per workload whose publish permissions are
// exactly natsx.PublishAllow (its own events and the JetStream API it
// needs; the gateway none of the services' events), with the password from
// the Secret nats-users; and every Deployment logs in as its own user, over
// TLS with only the CA of nats-tls mounted.
func TestNATSTLSAndUsers(t *testing.T) {
	for _, overlay := range overlays {
		t.Run(overlay, func(t *testing.T) {
			r := render(t, overlay)
			sts := r.statefulSets["nats"]
			if sts == nil {
				t.Fatalf("%s: no NATS StatefulSet", overlay)
			}
			spec := sts.Spec.Template.Spec
			c := spec.Containers[0]
			var raw string
			for _, v := range spec.Volumes {
				if v.ConfigMap != nil && r.configMaps[v.ConfigMap.Name] != nil {
					raw = r.configMaps[v.ConfigMap.Name].Data["nats.conf"]
				}
			}
			// The server resolves $VARIABLES from its environment: give each
			// a value that says where it came from.
			for _, name := range []string{"POD_NAME"} {
				t.Setenv(name, "env-"+name)
			}
			passwordEnv := map[string]string{}
			for _, p := range natsx.Processes {
				name := "NATS_PASSWORD_" + strings.ToUpper(p)
				passwordEnv[p] = name
				t.Setenv(name, "env-"+name)
			}
			cfg, err := conf.Parse(raw)
			if err != nil {
				t.Fatalf("%s: nats.conf does not parse: %v", overlay, err)
			}

			// Every stream's byte limit is reserved on each server holding a
			// replica: all of them must fit max_file_store, or JetStream
			// refuses to place them.
			js, _ := cfg["jetstream"].(map[string]any)
			store, _ := js["max_file_store"].(int64)
			for _, w := range grpcServices {
				d := r.deployments[w]
				if d == nil {
					continue
				}
				v := containerEnv(t, r, overlay+": Deployment "+w, d.Spec.Template.Spec.Containers[0])["CLINICCHAT_NATS_STREAM_MAX_BYTES"]
				perStream := natsx.DefaultStreamMaxBytes
				if v.literal {
					if perStream, err = strconv.ParseInt(v.value, 10, 64); err != nil {
						t.Errorf("%s: %s: CLINICCHAT_NATS_STREAM_MAX_BYTES=%q: %v", overlay, w, v.value, err)
					}
				}
				if need := int64(natsx.StreamCount()) * perStream; store <= 0 || need > store {
					t.Errorf("%s: %s declares %d streams of %d bytes (%d) but nats.conf max_file_store is %d: JetStream would not place them",
						overlay, w, natsx.StreamCount(), perStream, need, store)
				}
			}

			// TLS for clients and routes, from files on the nats-tls Secret.
			tlsDir := ""
			for _, m := range c.VolumeMounts {
				for _, v := range spec.Volumes {
					if v.Name == m.Name && v.Secret != nil && v.Secret.SecretName == "nats-tls" {
						tlsDir = m.MountPath
					}
				}
			}
			if tlsDir == "" {
				t.Errorf("%s: the NATS servers do not mount the Secret nats-tls", overlay)
			}
			checkTLS := func(where string, block any) {
				tls, ok := block.(map[string]any)
				if !ok {
					t.Errorf("%s: nats.conf has no %s tls block", overlay, where)
					return
				}
				for key, file := range map[string]string{"cert_file": "tls.crt", "key_file": "tls.key", "ca_file": "ca.crt"} {
					if got, _ := tls[key].(string); got != tlsDir+"/"+file {
						t.Errorf("%s: nats.conf %s tls %s = %q, want %s/%s from the Secret nats-tls", overlay, where, key, got, tlsDir, file)
					}
				}
			}
			checkTLS("client", cfg["tls"])
			cluster, _ := cfg["cluster"].(map[string]any)
			checkTLS("cluster", cluster["tls"])

			// A user per process, with exactly its permissions.
			authz, _ := cfg["authorization"].(map[string]any)
			users, _ := authz["users"].([]any)
			seen := map[string]bool{}
			for _, u := range users {
				m, _ := u.(map[string]any)
				name, _ := m["user"].(string)
				seen[name] = true
				want, err := natsx.PublishAllow(name)
				if err != nil {
					t.Errorf("%s: nats.conf user %q: %v", overlay, name, err)
					continue
				}
				if pw, _ := m["password"].(string); pw != "env-"+passwordEnv[name] {
					t.Errorf("%s: nats.conf user %s: the password must be $%s (from the Secret nats-users)", overlay, name, passwordEnv[name])
				}
				perms, _ := m["permissions"].(map[string]any)
				pub, _ := perms["publish"].(map[string]any)
				var allow []string
				list, _ := pub["allow"].([]any)
				for _, s := range list {
					allow = append(allow, fmt.Sprint(s))
				}
				if !slices.Equal(allow, want) {
					t.Errorf("%s: nats.conf user %s may publish %v, want exactly %v (natsx.PublishAllow)", overlay, name, allow, want)
				}
				if _, ok := pub["deny"]; ok || perms["subscribe"] != nil {
					t.Errorf("%s: nats.conf user %s: only publish.allow is expected", overlay, name)
				}
			}
			env := map[string]corev1.EnvVar{}
			for _, e := range c.Env {
				env[e.Name] = e
			}
			for _, p := range natsx.Processes {
				if !seen[p] {
					t.Errorf("%s: nats.conf has no user %s", overlay, p)
				}
				e, ok := env[passwordEnv[p]]
				if !ok || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil ||
					e.ValueFrom.SecretKeyRef.Name != "nats-users" || e.ValueFrom.SecretKeyRef.Key != p {
					t.Errorf("%s: the NATS servers' %s must come from the Secret nats-users, key %s", overlay, passwordEnv[p], p)
				}
			}

			// Every workload logs in as its own user, over TLS.
			for _, w := range workloads {
				d := r.deployments[w]
				if d == nil {
					t.Errorf("%s: no Deployment %s", overlay, w)
					continue
				}
				id := overlay + ": Deployment " + w
				ps := d.Spec.Template.Spec
				env := containerEnv(t, r, id, ps.Containers[0])
				if v := env["CLINICCHAT_NATS_USER"]; !v.literal || v.value != w {
					t.Errorf("%s: CLINICCHAT_NATS_USER must be %s (its own NATS user)", id, w)
				}
				if v := env["CLINICCHAT_NATS_PASSWORD"]; v.secret == nil || v.secret.Name != "nats-users" || v.secret.Key != w {
					t.Errorf("%s: CLINICCHAT_NATS_PASSWORD must come from the Secret nats-users, key %s", id, w)
				}
				ca := env["CLINICCHAT_NATS_TLS_CA"]
				if !ca.literal || ca.value == "" {
					t.Errorf("%s: CLINICCHAT_NATS_TLS_CA is not set: NATS without TLS", id)
					continue
				}
				ok := false
				for _, m := range ps.Containers[0].VolumeMounts {
					if !strings.HasPrefix(ca.value, m.MountPath+"/") {
						continue
					}
					for _, v := range ps.Volumes {
						if v.Name != m.Name || v.Secret == nil || v.Secret.SecretName != "nats-tls" {
							continue
						}
						// Only the CA: never the servers' key.
						ok = len(v.Secret.Items) == 1 && v.Secret.Items[0].Key == "ca.crt" &&
							m.MountPath+"/"+v.Secret.Items[0].Path == ca.value
					}
				}
				if !ok {
					t.Errorf("%s: CLINICCHAT_NATS_TLS_CA=%s must be the ca.crt (alone) of the Secret nats-tls", id, ca.value)
				}
			}
		})
	}
}
