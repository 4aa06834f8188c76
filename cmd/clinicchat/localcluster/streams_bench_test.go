package localcluster_test

// Two gateways in distributed mode and many /v1/events streams (issue 9):
// the NATS consumers each gateway holds do not grow with its streams.
//
//	go test ./cmd/clinicchat/localcluster -run '^$' -bench TwoGatewaysStreams -benchtime 1x
//
// TestTwoGatewaysConsumersDoNotGrowWithStreams asserts the count on every
// CI run with fewer streams.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/localcluster"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// raiseNoFile lifts the open-file limit to its hard limit, before the
// cluster starts: its processes inherit it (each gateway holds thousands
// of sockets, and so does this process, their client).
func raiseNoFile(tb testing.TB) uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		tb.Fatal(err)
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			tb.Fatal(err)
		}
	}
	return l.Cur
}

// gatewayConsumers counts, on each stream the gateways read, the
// consumers that are not a service's durable one: the gateways' own.
func gatewayConsumers(tb testing.TB, js jetstream.JetStream) map[string]int {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := map[string]int{}
	for _, name := range []string{natsx.StreamDelivery, natsx.StreamConversation} {
		str, err := js.Stream(ctx, name)
		if err != nil {
			tb.Fatal(err)
		}
		out[name] = 0
		l := str.ListConsumers(ctx)
		for ci := range l.Info() {
			if ci.Config.Durable == "" {
				out[name]++
			}
		}
		if err := l.Err(); err != nil {
			tb.Fatal(err)
		}
	}
	return out
}

// rawStreams holds /v1/events streams opened over raw sockets that read
// only the response headers (idle streams get a keep-alive every 15 s,
// which the socket buffers absorb).
type rawStreams struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (r *rawStreams) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		_ = c.Close()
	}
	r.conns = nil
}

// open opens users × perUser streams on addr as staff "<prefix>-<i>" of
// practice; every one must be answered 200.
func (r *rawStreams) open(tb testing.TB, c *localcluster.Cluster, addr, practice, prefix string, users, perUser int) {
	tb.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, users)
	sem := make(chan struct{}, 32)
	for u := range users {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			token, err := c.DevIssuer.Issue(fmt.Sprintf("%s-%d", prefix, u), "dentist", practice, "", 0)
			if err != nil {
				errs <- err
				return
			}
			for range perUser {
				conn, err := openRawStream(addr, token)
				if err != nil {
					errs <- err
					return
				}
				r.mu.Lock()
				r.conns = append(r.conns, conn)
				r.mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
}

// openRawStream sends GET /v1/events and reads up to the end of the
// response headers; anything but 200 is an error.
func openRawStream(addr, token string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := fmt.Fprintf(c, "GET /v1/events HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nAccept: text/event-stream\r\n\r\n", addr, token); err != nil {
		_ = c.Close()
		return nil, err
	}
	var head []byte
	b := make([]byte, 1)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if _, err := c.Read(b); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("read headers: %w", err)
		}
		head = append(head, b[0])
	}
	_ = c.SetDeadline(time.Time{})
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 200")) {
		_ = c.Close()
		status, _, _ := strings.Cut(string(head), "\r\n")
		return nil, fmt.Errorf("GET /v1/events on %s: %s", addr, status)
	}
	return c, nil
}

// deliversThrough sends a message to alice of the demo practice and waits
// for it on alice's stream on each gateway: every gateway's fan-out works
// (so each has its consumers).
func deliversThrough(tb testing.TB, c *localcluster.Cluster, label string) {
	tb.Helper()
	hc := &http.Client{Timeout: 30 * time.Second}
	call := func(token, method, path string, body, out any) {
		tb.Helper()
		raw, _ := json.Marshal(body)
		req, _ := http.NewRequest(method, "http://"+c.HTTPAddr+path, bytes.NewReader(raw))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			tb.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			tb.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
		if err := json.Unmarshal(b, out); err != nil {
			tb.Fatal(err)
		}
	}
	staff, err := c.DevIssuer.Issue("dr-lee", "dentist", "demo", "", 0)
	if err != nil {
		tb.Fatal(err)
	}
	alice, err := c.DevIssuer.Issue("alice", "patient", "demo", "", 0)
	if err != nil {
		tb.Fatal(err)
	}
	var conv struct{ Name string }
	call(staff, "POST", "/v1/conversations", map[string]any{"patient": "patients/alice"}, &conv)
	lines := make([]chan string, len(c.GatewayHTTPAddrs))
	for i, addr := range c.GatewayHTTPAddrs {
		sc, err := openRawStream(addr, alice)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = sc.Close() })
		lines[i] = make(chan string, 64)
		go func() {
			defer close(lines[i])
			r := bufio.NewScanner(sc)
			r.Buffer(make([]byte, 1<<16), 1<<20)
			for r.Scan() {
				lines[i] <- r.Text()
			}
		}()
	}
	text := "through every gateway " + label
	var msg struct{ Name string }
	call(staff, "POST", "/v1/"+conv.Name+"/messages", map[string]any{"text": text, "requestId": "gw-" + label}, &msg)
	for i, ch := range lines {
		deadline := time.After(30 * time.Second)
	wait:
		for {
			select {
			case l, ok := <-ch:
				if !ok {
					tb.Fatalf("gateway %d: alice's stream ended", i+1)
				}
				if strings.HasPrefix(l, "data:") && strings.Contains(l, msg.Name) {
					go func() {
						for range ch { // keep-alives, until the stream closes
						}
					}()
					break wait
				}
			case <-deadline:
				tb.Fatalf("gateway %d (%s): %s never reached alice's stream", i+1, c.GatewayHTTPAddrs[i], msg.Name)
			}
		}
	}
}

// gatewayRSS is each gateway process's resident set size.
func gatewayRSS(tb testing.TB, c *localcluster.Cluster) []int64 {
	tb.Helper()
	pids := c.PIDs()
	var out []int64
	for i := range c.GatewayHTTPAddrs {
		name := "gateway"
		if i > 0 {
			name = fmt.Sprintf("gateway-%d", i+1)
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pids[name]))
		if err != nil {
			tb.Fatal(err)
		}
		var kb int64
		for _, line := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ = strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			}
		}
		out = append(out, kb<<10)
	}
	return out
}

// twoGatewaysResult is what twoGateways measured.
type twoGatewaysResult struct {
	few, many           map[string]int // the gateways' consumers per stream
	fewStreams, streams int            // streams open on each gateway
	rssFew, rssMany     []int64
	openTime            time.Duration
}

// twoGateways runs the distributed stack with two gateways, opens 5
// streams on each and counts consumers, then opens perGateway streams on
// each (1 per 5 staff users of another practice) and counts again; both
// gateways must deliver an event at both points.
func twoGateways(tb testing.TB, c *localcluster.Cluster, perGateway int) twoGatewaysResult {
	raiseNoFile(tb)
	if len(c.GatewayHTTPAddrs) != 2 {
		tb.Fatalf("gateways: %v", c.GatewayHTTPAddrs)
	}
	nc, err := nats.Connect(c.NATSURL, nats.Name("streams benchmark"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	var streams rawStreams
	tb.Cleanup(streams.close)
	for i, addr := range c.GatewayHTTPAddrs {
		streams.open(tb, c, addr, "other", fmt.Sprintf("few%d", i), 1, 5)
	}
	deliversThrough(tb, c, "few")
	r := twoGatewaysResult{fewStreams: 5, few: gatewayConsumers(tb, js), rssFew: gatewayRSS(tb, c)}
	t0 := time.Now()
	for i, addr := range c.GatewayHTTPAddrs {
		streams.open(tb, c, addr, "other", fmt.Sprintf("many%d", i), perGateway/5, 5)
	}
	r.openTime = time.Since(t0)
	r.streams = 5 + perGateway/5*5
	deliversThrough(tb, c, "many")
	r.many, r.rssMany = gatewayConsumers(tb, js), gatewayRSS(tb, c)
	return r
}

// gatewayConsumersDoNotGrowWithStreams (a part of TestDistributedStack,
// which runs two gateways): each stream the gateways read has exactly one
// consumer per gateway with 5 event streams open on each and with 205; since
// each gateway delivered an event (so holds at least one), that is one each.
func gatewayConsumersDoNotGrowWithStreams(t *testing.T, c *localcluster.Cluster) {
	r := twoGateways(t, c, 200)
	want := map[string]int{natsx.StreamDelivery: 2, natsx.StreamConversation: 2}
	if fmt.Sprint(r.few) != fmt.Sprint(want) || fmt.Sprint(r.many) != fmt.Sprint(want) {
		t.Fatalf("the gateways' consumers: %v with %d streams per gateway, %v with %d; want %v both times",
			r.few, r.fewStreams, r.many, r.streams, want)
	}
}

// BenchmarkTwoGatewaysStreams: two gateways holding 10,010 streams between
// them; prints the gateways' consumers per stream with 10 and with 10,010
// streams, and each gateway's memory per stream.
func BenchmarkTwoGatewaysStreams(b *testing.B) {
	r := twoGateways(b, start(b, func(cfg *localcluster.Config) { cfg.GatewayReplicas = 2 }), 5000)
	fmt.Printf("BenchmarkTwoGatewaysStreams: 2 gateways, %d streams in all (%d on each) opened in %s, all answered 200\n",
		2*r.streams, r.streams, r.openTime.Round(time.Millisecond))
	fmt.Printf("  gateways' NATS consumers per stream (2 gateways): with %d streams %v; with %d streams %v\n",
		2*r.fewStreams, r.few, 2*r.streams, r.many)
	for i := range r.rssFew {
		per := float64(r.rssMany[i]-r.rssFew[i]) / float64(r.streams-r.fewStreams)
		fmt.Printf("  gateway %d RSS %d → %d MiB: %.1f KiB per stream\n", i+1, r.rssFew[i]>>20, r.rssMany[i]>>20, per/1024)
		b.ReportMetric(per/1024, fmt.Sprintf("KiB/stream-gw%d", i+1))
	}
	b.ReportMetric(float64(r.many[natsx.StreamDelivery]+r.many[natsx.StreamConversation])/2, "consumers/gateway")
}
