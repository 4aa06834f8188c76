package bench_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"
)

// auditedReads is the number of conversation.read records in practice's
// audit log (read by its practice admin, through the gateway at base).
func auditedReads(t *testing.T, base, practice string) int {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"subject": "bench-auditor", "role": "practice_admin", "practice": practice})
	resp, err := http.Post(base+"/v1/dev/tokens", "application/json", bytes.NewReader(body))
	require.NoError(t, err)
	var tok struct {
		Token string `json:"token"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&tok))
	resp.Body.Close()
	require.NotEmpty(t, tok.Token)

	req, err := http.NewRequest(http.MethodGet, base+"/v1/auditEvents:export?filter="+url.QueryEscape(`action="conversation.read"`), nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	n := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e struct {
			Action  string `json:"action"`
			Outcome string `json:"outcome"`
		}
		require.NoError(t, json.Unmarshal(sc.Bytes(), &e))
		require.Equal(t, "conversation.read", e.Action)
		n++
	}
	require.NoError(t, sc.Err())
	return n
}
