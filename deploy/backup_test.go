package deploy_test

import (
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// barmanPlugin is the Barman Cloud plugin's name in a Cluster's
// spec.plugins and a ScheduledBackup's pluginConfiguration.
const barmanPlugin = "barman-cloud.cloudnative-pg.io"

// checkBackups: in production every database cluster archives its WAL
// through the Barman Cloud plugin into an ObjectStore of its own (a path no
// other cluster uses, with credentials from a Secret, a retention policy)
// and has a ScheduledBackup by the plugin. Whatever backup objects another
// overlay has must be just as complete.
func checkBackups(t *testing.T, r *rendered, production bool) {
	if !production && len(r.objectStores) == 0 && len(r.scheduledBackups) == 0 {
		return // dev: no object storage (deploy/README.md, "Backups")
	}
	paths := map[string]string{}
	storeOf := map[string]string{}
	for _, name := range sortedKeys(r.clusters) {
		id := fmt.Sprintf("%s: Cluster %s", r.overlay, name)
		store := ""
		plugins, _, _ := unstructured.NestedSlice(r.clusters[name].Object, "spec", "plugins")
		for _, p := range plugins {
			pm, _ := p.(map[string]any)
			if pm["name"] != barmanPlugin {
				continue
			}
			if archiver, _ := pm["isWALArchiver"].(bool); !archiver {
				t.Errorf("%s: the %s plugin is not its WAL archiver (isWALArchiver: true): no point-in-time recovery", id, barmanPlugin)
			}
			store, _, _ = unstructured.NestedString(pm, "parameters", "barmanObjectName")
		}
		if store == "" {
			t.Errorf("%s: no WAL archiving: spec.plugins needs %s with parameters.barmanObjectName", id, barmanPlugin)
			continue
		}
		storeOf[name] = store
		obj := r.objectStores[store]
		if obj == nil {
			t.Errorf("%s: ObjectStore %s does not exist", id, store)
			continue
		}
		sid := fmt.Sprintf("%s: ObjectStore %s", r.overlay, store)
		dest, _, _ := unstructured.NestedString(obj.Object, "spec", "configuration", "destinationPath")
		if !strings.Contains(dest, "://") {
			t.Errorf("%s: spec.configuration.destinationPath %q is not an object store URL", sid, dest)
		}
		if other, ok := paths[dest]; ok {
			t.Errorf("%s: clusters %s and %s archive into one path %s", sid, other, name, dest)
		}
		paths[dest] = name
		if rp, _, _ := unstructured.NestedString(obj.Object, "spec", "retentionPolicy"); rp == "" {
			t.Errorf("%s: no spec.retentionPolicy: backups and WAL would pile up forever", sid)
		}
		for _, key := range []string{"accessKeyId", "secretAccessKey"} {
			secret, _, _ := unstructured.NestedString(obj.Object, "spec", "configuration", "s3Credentials", key, "name")
			k, _, _ := unstructured.NestedString(obj.Object, "spec", "configuration", "s3Credentials", key, "key")
			if secret == "" || k == "" {
				t.Errorf("%s: spec.configuration.s3Credentials.%s must name a Secret and key", sid, key)
			}
		}
		for _, part := range []string{"wal", "data"} {
			if enc, _, _ := unstructured.NestedString(obj.Object, "spec", "configuration", part, "encryption"); enc == "" {
				t.Errorf("%s: spec.configuration.%s.encryption is not set: backups hold patient data", sid, part)
			}
		}
	}
	scheduled := map[string]bool{}
	for _, name := range sortedKeys(r.scheduledBackups) {
		u := r.scheduledBackups[name]
		id := fmt.Sprintf("%s: ScheduledBackup %s", r.overlay, name)
		cluster, _, _ := unstructured.NestedString(u.Object, "spec", "cluster", "name")
		if r.clusters[cluster] == nil {
			t.Errorf("%s: spec.cluster.name %q is no Cluster", id, cluster)
		}
		scheduled[cluster] = true
		if m, _, _ := unstructured.NestedString(u.Object, "spec", "method"); m != "plugin" {
			t.Errorf("%s: spec.method %q, want plugin", id, m)
		}
		if p, _, _ := unstructured.NestedString(u.Object, "spec", "pluginConfiguration", "name"); p != barmanPlugin {
			t.Errorf("%s: spec.pluginConfiguration.name %q, want %s", id, p, barmanPlugin)
		}
		// CloudNativePG's schedule has six fields, seconds first: a
		// five-field cron would run at a different time than meant.
		if s, _, _ := unstructured.NestedString(u.Object, "spec", "schedule"); len(strings.Fields(s)) != 6 {
			t.Errorf("%s: spec.schedule %q must have six fields (seconds first)", id, s)
		}
	}
	for _, name := range sortedKeys(r.clusters) {
		if !scheduled[name] {
			t.Errorf("%s: Cluster %s has no ScheduledBackup", r.overlay, name)
		}
	}
	for _, name := range sortedKeys(r.objectStores) {
		used := false
		for _, s := range storeOf {
			used = used || s == name
		}
		if !used {
			t.Errorf("%s: ObjectStore %s: no cluster archives into it", r.overlay, name)
		}
	}
}
