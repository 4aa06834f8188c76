package main_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// proc is the real clinicchat binary running in a child process.
type proc struct {
	cmd  *exec.Cmd
	base string
}

func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "clinicchat")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

// launch starts the binary on dir and waits for its "ready" log line.
func launch(t *testing.T, bin, dir string) *proc {
	t.Helper()
	cmd := exec.Command(bin, "--data-dir", dir, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--log-level", "info")
	logs, err := cmd.StderrPipe() // zap logs to stderr
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			var line struct {
				Msg      string `json:"msg"`
				HTTPAddr string `json:"http_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "clinicchat all-in-one ready" {
				ready <- line.HTTPAddr
			}
		}
	}()
	select {
	case addr := <-ready:
		return &proc{cmd: cmd, base: "http://" + addr}
	case <-time.After(60 * time.Second):
		t.Fatal("the all-in-one did not become ready")
		return nil
	}
}

func (p *proc) call(method, path, token string, body any, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, p.base+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		_ = json.Unmarshal(raw, out)
	}
	return resp.StatusCode, nil
}

// messages returns the names of every message of conv, page by page.
func (p *proc) messages(t *testing.T, token, conv string) map[string]bool {
	t.Helper()
	stored := map[string]bool{}
	pageToken := ""
	for {
		var page struct {
			Messages      []struct{ Name string }
			NextPageToken string
		}
		code, err := p.call("GET", "/v1/"+conv+"/messages?pageSize=200&pageToken="+pageToken, token, nil, &page)
		require.NoError(t, err)
		require.Equal(t, 200, code)
		for _, m := range page.Messages {
			stored[m.Name] = true
		}
		if pageToken = page.NextPageToken; pageToken == "" {
			return stored
		}
	}
}

func (p *proc) token(t *testing.T, sub, role string) string {
	var out struct{ Token string }
	code, err := p.call("POST", "/v1/dev/tokens", "", map[string]any{"subject": sub, "role": role, "practice": "demo"}, &out)
	require.NoError(t, err)
	require.Equal(t, 200, code)
	return out.Token
}

// startThread builds and launches the binary on a fresh data dir and starts
// a staff member's thread with patient.
func startThread(t *testing.T, patient string) (bin, dir string, p *proc, staff, conv string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin, dir = build(t), t.TempDir()
	p = launch(t, bin, dir)
	staff = p.token(t, "dr-lee", "dentist")
	var c struct{ Name string }
	code, err := p.call("POST", "/v1/conversations", staff, map[string]any{"patient": "patients/" + patient}, &c)
	require.NoError(t, err)
	require.Equal(t, 200, code)
	return bin, dir, p, staff, c.Name
}

// SIGKILL in the middle of concurrent sends loses nothing that was
// acknowledged: after a restart on the same data dir every acknowledged
// message is there, and its event still reaches the conversation list.
func TestSIGKILLLosesNothingAcknowledged(t *testing.T) {
	bin, dir, p, staff, conv := startThread(t, "alice")

	var mu sync.Mutex
	acked := map[string]bool{}
	var wg sync.WaitGroup
	killAfter := make(chan struct{})
	var once sync.Once
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				var m struct{ Name string }
				code, err := p.call("POST", "/v1/"+conv+"/messages", staff, map[string]any{
					"text": fmt.Sprintf("w%d m%d", w, i), "requestId": fmt.Sprintf("kill-%d-%d", w, i)}, &m)
				if err != nil {
					return // the process is gone
				}
				if code == 200 {
					mu.Lock()
					acked[m.Name] = true
					if len(acked) >= 100 {
						once.Do(func() { close(killAfter) })
					}
					mu.Unlock()
				}
			}
		}()
	}
	<-killAfter
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	wg.Wait()
	_ = p.cmd.Wait()

	p2 := launch(t, bin, dir)
	staff = p2.token(t, "dr-lee", "dentist")
	stored := p2.messages(t, staff, conv)
	mu.Lock()
	defer mu.Unlock()
	for name := range acked {
		require.True(t, stored[name], "acknowledged %s was lost", name)
	}
	newest := 0
	for name := range stored {
		var n int
		_, _ = fmt.Sscanf(name[strings.LastIndex(name, "/")+1:], "%d", &n)
		newest = max(newest, n)
	}
	// The outbox carries the events of the stored messages across the kill:
	// the conversation's projection catches up to the newest message.
	require.Eventually(t, func() bool {
		var list struct {
			Conversations []struct {
				LastMessageSeq int `json:"lastMessageSeq"`
			}
		}
		code, err := p2.call("GET", "/v1/conversations", staff, nil, &list)
		return err == nil && code == 200 && len(list.Conversations) == 1 && list.Conversations[0].LastMessageSeq == newest
	}, 20*time.Second, 50*time.Millisecond)
}

// SIGTERM drains: the process exits 0 soon after, in-flight sends either
// complete or fail cleanly, and everything acknowledged is there after a
// restart.
func TestSIGTERMDrainsAndStopsCleanly(t *testing.T) {
	bin, dir, p, staff, conv := startThread(t, "emma")

	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	started := make(chan struct{})
	var once sync.Once
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				var m struct{ Name string }
				code, err := p.call("POST", "/v1/"+conv+"/messages", staff, map[string]any{
					"text": "draining", "requestId": fmt.Sprintf("term-%d-%d", w, i)}, &m)
				if err != nil || code != 200 {
					return // refused or closed while stopping
				}
				mu.Lock()
				acked = append(acked, m.Name)
				if len(acked) >= 40 {
					once.Do(func() { close(started) })
				}
				mu.Unlock()
			}
		}()
	}
	<-started
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	select {
	case err := <-exited:
		require.NoError(t, err, "exit status 0")
	case <-time.After(30 * time.Second):
		t.Fatal("did not stop within 30s of SIGTERM")
	}
	wg.Wait()

	p2 := launch(t, bin, dir)
	staff = p2.token(t, "dr-lee", "dentist")
	stored := p2.messages(t, staff, conv)
	mu.Lock()
	defer mu.Unlock()
	for _, name := range acked {
		require.True(t, stored[name], "acknowledged %s was lost", name)
	}
}
