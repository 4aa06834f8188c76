package localcluster_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
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
