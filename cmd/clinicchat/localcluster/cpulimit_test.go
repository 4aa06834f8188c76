package localcluster_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/localcluster"
)

// TestCPULimitsMatchTheManifests: the GOMAXPROCS the local cluster gives each
// process is the CPU limit of its container in deploy/k8s, which Go reads in
// a pod, so that the local production shape schedules as the real one does.
func TestCPULimitsMatchTheManifests(t *testing.T) {
	limit := regexp.MustCompile(`(?m)limits:\s*\n(?:\s+\S.*\n)*?\s+cpu:\s*"?([0-9.]+)"?`)
	root := filepath.Join("..", "..", "..", "deploy", "k8s")
	manifests := map[string]string{
		"gateway":      "base/gateway/deployment.yaml",
		"delivery":     "base/delivery/deployment.yaml",
		"conversation": "base/conversation/deployment.yaml",
		"preferences":  "base/preferences/deployment.yaml",
		"attachment":   "base/attachment/deployment.yaml",
		"audit":        "base/audit/deployment.yaml",
		"nats-server":  "components/nats/statefulset.yaml",
	}
	for bin, file := range manifests {
		b, err := os.ReadFile(filepath.Join(root, file))
		require.NoError(t, err)
		found := limit.FindAllSubmatch(b, -1)
		require.NotEmpty(t, found, "%s has no CPU limit", file)
		for _, m := range found {
			cpus, err := strconv.ParseFloat(string(m[1]), 64)
			require.NoError(t, err)
			require.Equal(t, float64(localcluster.CPULimit(bin)), cpus, "%s: a container's CPU limit against CPULimit(%q)", file, bin)
		}
	}
}

// TestSysmonSettingMatchesTheManifests: every Go container in deploy/k8s
// runs with the GODEBUG the local cluster gives its processes
// (localcluster.SysmonGODEBUG), so the local production shape schedules as
// the real one does.
func TestSysmonSettingMatchesTheManifests(t *testing.T) {
	godebug := regexp.MustCompile(`(?m)- name: GODEBUG\s*\n\s+value:\s*"?([^"\n]+)"?`)
	root := filepath.Join("..", "..", "..", "deploy", "k8s")
	for _, file := range []string{
		"base/gateway/deployment.yaml", "base/delivery/deployment.yaml", "base/conversation/deployment.yaml",
		"base/preferences/deployment.yaml", "base/attachment/deployment.yaml", "base/audit/deployment.yaml",
		"components/nats/statefulset.yaml",
	} {
		b, err := os.ReadFile(filepath.Join(root, file))
		require.NoError(t, err)
		m := godebug.FindSubmatch(b)
		require.NotNil(t, m, "%s sets no GODEBUG", file)
		require.Contains(t, strings.Split(string(m[1]), ","), localcluster.SysmonGODEBUG, file)
	}
}
