package deploy_test

import (
	"fmt"
	"path/filepath"
	"sort"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// overlays are the directories under k8s/overlays that are rendered and
// checked; every directory there must be listed (TestEveryOverlayIsTested).
var overlays = []string{"dev", "production"}

// cnpgCluster is the CloudNativePG Cluster kind, checked through unstructured
// (its Go types would pull the operator's dependency tree into this module).
var cnpgCluster = schema.GroupVersionKind{Group: "postgresql.cnpg.io", Version: "v1", Kind: "Cluster"}

// The backup kinds: CloudNativePG's ScheduledBackup and the Barman Cloud
// plugin's ObjectStore (unstructured too).
var (
	cnpgScheduledBackup = schema.GroupVersionKind{Group: "postgresql.cnpg.io", Version: "v1", Kind: "ScheduledBackup"}
	barmanObjectStore   = schema.GroupVersionKind{Group: "barmancloud.cnpg.io", Version: "v1", Kind: "ObjectStore"}
	// cert-manager's kinds, also checked through unstructured.
	cmCertificate = schema.GroupVersionKind{Group: "cert-manager.io", Version: "v1", Kind: "Certificate"}
	cmIssuer      = schema.GroupVersionKind{Group: "cert-manager.io", Version: "v1", Kind: "Issuer"}
)

// rendered is one overlay's output, decoded into the Kubernetes API types.
type rendered struct {
	overlay   string
	namespace string // the namespace every object lives in

	namespaces   map[string]*corev1.Namespace
	deployments  map[string]*appsv1.Deployment
	statefulSets map[string]*appsv1.StatefulSet
	services     map[string]*corev1.Service
	configMaps   map[string]*corev1.ConfigMap
	accounts     map[string]*corev1.ServiceAccount
	pvcs         map[string]*corev1.PersistentVolumeClaim
	ingresses    map[string]*networkingv1.Ingress
	policies     map[string]*networkingv1.NetworkPolicy
	pdbs         map[string]*policyv1.PodDisruptionBudget
	hpas         map[string]*autoscalingv2.HorizontalPodAutoscaler
	clusters     map[string]*unstructured.Unstructured // CloudNativePG
	// scheduledBackups and objectStores: PostgreSQL backups (components/postgres/backup).
	scheduledBackups map[string]*unstructured.Unstructured
	objectStores     map[string]*unstructured.Unstructured
	certificates     map[string]*unstructured.Unstructured // cert-manager
	issuers          map[string]*unstructured.Unstructured // cert-manager
}

func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, networkingv1.AddToScheme,
		policyv1.AddToScheme, autoscalingv2.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}

// render builds k8s/overlays/<overlay> with the kustomize library, as
// `kubectl apply -k` would, and decodes every object strictly: an unknown or
// duplicated field, a wrong type or an unparsable quantity fails the test.
func render(t *testing.T, overlay string) *rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join("k8s", "overlays", overlay))
	if err != nil {
		t.Fatalf("kustomize build %s: %v", overlay, err)
	}
	scheme := newScheme()
	strict := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme,
		kjson.SerializerOptions{Yaml: true, Strict: true})

	r := &rendered{
		overlay:      overlay,
		namespaces:   map[string]*corev1.Namespace{},
		deployments:  map[string]*appsv1.Deployment{},
		statefulSets: map[string]*appsv1.StatefulSet{},
		services:     map[string]*corev1.Service{},
		configMaps:   map[string]*corev1.ConfigMap{},
		accounts:     map[string]*corev1.ServiceAccount{},
		pvcs:         map[string]*corev1.PersistentVolumeClaim{},
		ingresses:    map[string]*networkingv1.Ingress{},
		policies:     map[string]*networkingv1.NetworkPolicy{},
		pdbs:         map[string]*policyv1.PodDisruptionBudget{},
		hpas:         map[string]*autoscalingv2.HorizontalPodAutoscaler{},
		clusters:     map[string]*unstructured.Unstructured{},

		scheduledBackups: map[string]*unstructured.Unstructured{},
		objectStores:     map[string]*unstructured.Unstructured{},
		certificates:     map[string]*unstructured.Unstructured{},
		issuers:          map[string]*unstructured.Unstructured{},
	}
	var objectNamespaces []string
	for _, res := range resMap.Resources() {
		y, err := res.AsYAML()
		if err != nil {
			t.Fatalf("%s: %s: %v", overlay, res.CurId(), err)
		}
		id := fmt.Sprintf("%s: %s/%s", overlay, res.GetKind(), res.GetName())
		if res.GetNamespace() != "" {
			objectNamespaces = append(objectNamespaces, res.GetNamespace())
		} else if res.GetKind() != "Namespace" {
			t.Errorf("%s has no namespace", id)
		}

		obj, gvk, err := strict.Decode(y, nil, nil)
		if runtime.IsNotRegisteredError(err) && gvk != nil {
			into := map[schema.GroupVersionKind]map[string]*unstructured.Unstructured{
				cnpgCluster: r.clusters, cmCertificate: r.certificates, cmIssuer: r.issuers,
				cnpgScheduledBackup: r.scheduledBackups, barmanObjectStore: r.objectStores}[*gvk]
			if into != nil {
				u := &unstructured.Unstructured{}
				if err := u.UnmarshalJSON(mustJSON(t, res)); err != nil {
					t.Fatalf("%s: %v", id, err)
				}
				if err := add(into, u.GetName(), u); err != nil {
					t.Errorf("%s: %v", id, err)
				}
				continue
			}
		}
		if err != nil {
			t.Errorf("%s does not decode strictly: %v", id, err)
			continue
		}
		if err := putUnique(r, obj); err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
	if len(r.namespaces) != 1 {
		t.Fatalf("%s: want exactly one Namespace object, got %d", overlay, len(r.namespaces))
	}
	for name := range r.namespaces {
		r.namespace = name
	}
	for _, ns := range objectNamespaces {
		if ns != r.namespace {
			t.Errorf("%s: object in namespace %q, want %q", overlay, ns, r.namespace)
		}
	}
	return r
}

func mustJSON(t *testing.T, res interface{ MarshalJSON() ([]byte, error) }) []byte {
	t.Helper()
	b, err := res.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// putUnique files obj by kind; any kind not listed here is an error, so a
// new kind of object gets checks before it ships.
func putUnique(r *rendered, obj runtime.Object) error {
	switch o := obj.(type) {
	case *corev1.Namespace:
		return add(r.namespaces, o.Name, o)
	case *appsv1.Deployment:
		return add(r.deployments, o.Name, o)
	case *appsv1.StatefulSet:
		return add(r.statefulSets, o.Name, o)
	case *corev1.Service:
		return add(r.services, o.Name, o)
	case *corev1.ConfigMap:
		return add(r.configMaps, o.Name, o)
	case *corev1.ServiceAccount:
		return add(r.accounts, o.Name, o)
	case *corev1.PersistentVolumeClaim:
		return add(r.pvcs, o.Name, o)
	case *networkingv1.Ingress:
		return add(r.ingresses, o.Name, o)
	case *networkingv1.NetworkPolicy:
		return add(r.policies, o.Name, o)
	case *policyv1.PodDisruptionBudget:
		return add(r.pdbs, o.Name, o)
	case *autoscalingv2.HorizontalPodAutoscaler:
		return add(r.hpas, o.Name, o)
	default:
		return fmt.Errorf("unexpected kind %T: add it to the manifest test", obj)
	}
}

func add[T any](m map[string]T, name string, v T) error {
	if _, ok := m[name]; ok {
		return fmt.Errorf("duplicate object %q", name)
	}
	m[name] = v
	return nil
}

func sortedKeys[T any](m map[string]T) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
