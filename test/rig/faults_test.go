package rig

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/bench"
	"github.com/clinicchat/clinicchat/cmd/clinicchat/localcluster"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// Load: a steady open-loop rate from senders with a thread and an open
// recipient stream each, retrying failed sends with the same requestId.
const (
	loadRate    = 200.0
	loadSenders = 16
)

// TestFaults runs the rig and, under load, each fault in turn: every
// acknowledged send must reach its recipient's stream exactly once and in
// order per thread, no
// retry may make a second message, and the audit log must hold every send
// and verify. Figures are printed, never asserted.
func TestFaults(t *testing.T) {
	if why := canRun(); why != "" {
		t.Skip(why)
	}
	if testing.Short() {
		t.Skip("the fault rig builds every binary and runs 14 processes across 8 namespaces")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	r := startRig(t, ctx)
	t.Logf("rig up in %s: NATS %s, PostgreSQL %s, gateways %s", time.Since(start).Round(time.Millisecond),
		r.natsURLs, r.pgHost.ip, strings.Join(r.gwURLs, " "))

	t.Run("gateway user cannot forge delivery events", func(t *testing.T) { r.forgeryRefused(t, ctx) })

	var all []figures
	for _, f := range []struct {
		name string
		do   func(ctx context.Context) (healed time.Time, err error)
		// check asserts what the fault must have made clients see (never a time).
		check func(t *testing.T, res *bench.Result, fig figures)
	}{
		{natsLeaderFault, r.killNATSLeader, nil},
		{"gateway host g1 cut off (link down 8s)", r.cutGateway, func(t *testing.T, res *bench.Result, _ figures) {
			if res.Reconnects == 0 {
				t.Error("no recipient stream reconnected: g1's clients did not fail over to g2")
			}
		}},
		{"PostgreSQL restarted", r.restartPostgres, func(t *testing.T, _ *bench.Result, fig figures) {
			if fig.errors["UNAVAILABLE"] == 0 {
				t.Errorf("no send failed UNAVAILABLE while PostgreSQL was down (errors: %s)", fig.errorsText())
			}
		}},
		{"rolling restart of every service and gateway (SIGTERM)", r.rollingRestart, func(t *testing.T, res *bench.Result, _ figures) {
			if res.Reconnects == 0 {
				t.Error("no recipient stream reconnected although every gateway restarted")
			}
		}},
		{"delivery replica SIGKILLed while relaying its outbox", r.killDelivery, nil},
	} {
		ok := t.Run(f.name, func(t *testing.T) {
			fig, res := r.underLoad(t, ctx, f.name, f.do)
			if f.check != nil {
				f.check(t, res, fig)
			}
			all = append(all, fig)
		})
		if !ok && ctx.Err() != nil {
			break
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| fault | sends/s (run) | sends during | errors by reason | time to recover | p99 during | send → stream p99 (run) | lost | duplicated | out of order |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, f := range all {
		fmt.Fprintf(&b, "| %s | %.0f | %d | %s | %s | %.0f ms | %.0f ms | %d | %d | %d |\n", f.name, f.rate, f.sends, f.errorsText(),
			f.recover.Round(100*time.Millisecond), f.p99ms, f.streamP99ms, f.lost, f.duplicated, f.outOfOrder)
	}
	t.Logf("figures (run took %s):%s", time.Since(start).Round(time.Second), b.String())
}

// figures are one fault's.
type figures struct {
	name             string
	sends            int
	errors           map[string]int
	recover          time.Duration
	p99ms            float64
	lost, duplicated int
	rate             float64
	// failedP50ms is how long a failed attempt took (fail fast or not).
	failedP50ms float64
	// streamP99ms is send → recipient's stream over the whole run.
	streamP99ms float64
	outOfOrder  int
}

func (f figures) errorsText() string {
	if len(f.errors) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(f.errors)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, f.errors[k]))
	}
	return strings.Join(parts, ", ")
}

// attempt is one send attempt the load made.
type attempt struct {
	start  time.Time
	took   time.Duration
	reason string
}

type recorder struct {
	mu       sync.Mutex
	attempts []attempt
	first    chan struct{}
	once     sync.Once
}

func (rc *recorder) observe(start time.Time, took time.Duration, reason string) {
	rc.once.Do(func() { close(rc.first) })
	rc.mu.Lock()
	rc.attempts = append(rc.attempts, attempt{start, took, reason})
	rc.mu.Unlock()
}

const natsLeaderFault = "NATS stream leader SIGKILLed, restarted"

// slowAttempt marks an attempt as part of the outage in "time to recover"
// (well above the steady p99 even on a busy machine).
const slowAttempt = 2 * time.Second

// underLoad runs the load, injects the fault after a steady stretch (do
// returns when it has healed), lets the load run on, and checks.
func (r *rig) underLoad(t *testing.T, ctx context.Context, name string, do func(context.Context) (time.Time, error)) (figures, *bench.Result) {
	const seconds = 25
	rc := &recorder{first: make(chan struct{})}
	cfg := bench.Config{HTTPURL: r.gwURLs[0], FailoverURLs: r.gwURLs[1:], Senders: loadSenders, Messages: int(loadRate * seconds),
		Duration: seconds * time.Second, Rate: loadRate, TextBytes: 64, Wait: time.Minute, StreamIdle: 4 * time.Second, Retry: true,
		AttemptTimeout: 3 * time.Second, Observe: rc.observe}
	type out struct {
		res *bench.Result
		err error
	}
	done := make(chan out, 1)
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	go func() {
		res, err := bench.Run(lctx, cfg)
		done <- out{res, err}
	}()
	var injected, healed time.Time
	var ferr error
	select {
	case <-rc.first:
		select {
		case <-time.After(4 * time.Second): // a steady stretch first
		case <-ctx.Done():
		}
		injected = time.Now()
		healed, ferr = do(ctx)
	case o := <-done:
		t.Fatalf("the load ended before its first send: %v", o.err)
	}
	if ferr != nil {
		stopLoad()
		<-done
		t.Fatalf("inject or heal: %v", ferr)
	}
	o := <-done
	if o.err != nil {
		t.Fatalf("load: %v", o.err)
	}
	res := o.res

	// The fault's figures: attempts that ended after the injection until
	// the outage was over.
	rc.mu.Lock()
	attempts := slices.Clone(rc.attempts)
	rc.mu.Unlock()
	recovered := injected
	for _, a := range attempts {
		end := a.start.Add(a.took)
		if end.After(injected) && a.start.Before(healed.Add(15*time.Second)) && (a.reason != "" || a.took >= slowAttempt) &&
			end.After(recovered) {
			recovered = end
		}
	}
	windowEnd := recovered
	if healed.After(windowEnd) {
		windowEnd = healed
	}
	fig := figures{name: name, errors: map[string]int{}, recover: recovered.Sub(injected), lost: res.Lost + res.Extra,
		duplicated: res.Duplicated, rate: res.SendsPerS, streamP99ms: res.Stream.P99,
		outOfOrder: res.OutOfOrder}
	var lat, failed []time.Duration
	for _, a := range attempts {
		end := a.start.Add(a.took)
		if end.Before(injected) || a.start.After(windowEnd) {
			continue
		}
		fig.sends++
		lat = append(lat, a.took)
		if a.reason != "" {
			fig.errors[a.reason]++
			failed = append(failed, a.took)
		}
	}
	if len(failed) > 0 {
		slices.Sort(failed)
		fig.failedP50ms = float64(failed[len(failed)/2]) / float64(time.Millisecond)
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		fig.p99ms = float64(lat[min(len(lat)-1, int(0.99*float64(len(lat))))]) / float64(time.Millisecond)
	}
	t.Logf("%s: load %d acked of %d at %.0f sends/s (ack p99 %.0f ms, stream p99 %.0f ms), %d stream reconnects, %d resets",
		name, res.Acked, res.Attempted, res.SendsPerS, res.Ack.P99, res.Stream.P99, res.Reconnects, res.Resets)
	t.Logf("%s: during the fault (%s from injection, healed after %s): %d sends, errors %s (a failed attempt took p50 %.0f ms), recovered after %s, p99 %.0f ms; lost %d, duplicated %d, out of order %d, extra messages %d",
		name, windowEnd.Sub(injected).Round(time.Millisecond), healed.Sub(injected).Round(time.Millisecond), fig.sends, fig.errorsText(), fig.failedP50ms,
		fig.recover.Round(time.Millisecond), fig.p99ms, res.Lost, res.Duplicated, res.OutOfOrder, res.Extra)

	// An infrastructure fault is a retryable UNAVAILABLE (or a timeout or
	// broken connection the client retries), never INTERNAL.
	if n := fig.errors["INTERNAL"]; n > 0 {
		t.Errorf("%d sends failed INTERNAL during the fault: a fault the client should retry must be UNAVAILABLE", n)
	}
	if res.Acked == 0 {
		t.Errorf("the load acknowledged no send")
	}
	if res.Acked != res.Attempted {
		t.Errorf("a retrying client lost %d sends (never acknowledged)", res.Attempted-res.Acked)
	}
	if res.Lost != 0 || res.Duplicated != 0 || res.Extra != 0 {
		t.Errorf("lost %d, duplicated %d, extra (a retry made a second message) %d: all must be 0",
			res.Lost, res.Duplicated, res.Extra)
	}
	if res.OutOfOrder != 0 {
		t.Errorf("%d messages reached their recipient after a later one of their thread: must be 0", res.OutOfOrder)
	}
	if err := r.ps.check(); err != nil {
		t.Errorf("after the fault: %v", err)
	}
	r.checkAudit(t, ctx, res)
	return fig, res
}

// checkAudit: every acknowledged send has its message.send event in the
// practice's audit log, and the log verifies.
func (r *rig) checkAudit(t *testing.T, ctx context.Context, res *bench.Result) {
	admin, err := devToken(ctx, r.gwURLs[1], "rig-admin", "practice_admin", res.Practice)
	if err != nil {
		t.Errorf("audit: %v", err)
		return
	}
	want := map[string]bool{}
	for _, n := range res.AckedNames {
		want[n] = true
	}
	// The audit log consumes the streams on its own time: poll until every
	// acknowledged send is in it.
	var missing atomic.Int64
	caughtUp := func() bool {
		got, err := r.auditedSends(ctx, admin)
		if err != nil {
			t.Errorf("audit list: %v", err)
			return true
		}
		n := 0
		for name := range want {
			if !got[name] {
				n++
			}
		}
		missing.Store(int64(n))
		return n == 0 || ctx.Err() != nil
	}
	missing.Store(int64(len(want)))
	assert.Eventually(t, caughtUp, 90*time.Second, 500*time.Millisecond, "the audit log catches up with the acknowledged sends")
	if m := missing.Load(); m > 0 {
		t.Errorf("audit log incomplete: %d of %d acknowledged sends have no message.send event", m, len(want))
	}
	var v struct {
		Valid   bool `json:"valid"`
		Checked int  `json:"checked"`
	}
	if err := getJSON(ctx, r.gwURLs[1]+"/v1/auditEvents:verify", admin, &v); err != nil {
		t.Errorf("audit verify: %v", err)
		return
	}
	if !v.Valid {
		t.Errorf("audit log of %s does not verify: %+v", res.Practice, v)
	}
	t.Logf("audit: %d message.send events found, log valid (%d checked)", len(want), v.Checked)
}

// auditedSends lists the resources of every message.send event in the
// practice's audit log, page by page.
func (r *rig) auditedSends(ctx context.Context, admin string) (map[string]bool, error) {
	got := map[string]bool{}
	token := ""
	for {
		q := url.Values{"filter": {`action="message.send"`}, "pageSize": {"1000"}}
		if token != "" {
			q.Set("pageToken", token)
		}
		var page struct {
			AuditEvents []struct {
				Resource string `json:"resource"`
			} `json:"auditEvents"`
			NextPageToken string `json:"nextPageToken"`
		}
		if err := getJSON(ctx, r.gwURLs[1]+"/v1/auditEvents?"+q.Encode(), admin, &page); err != nil {
			return nil, err
		}
		for _, e := range page.AuditEvents {
			got[e.Resource] = true
		}
		if token = page.NextPageToken; token == "" {
			return got, nil
		}
	}
}

func devToken(ctx context.Context, base, subject, role, practice string) (string, error) {
	body, _ := json.Marshal(map[string]string{"subject": subject, "role": role, "practice": practice})
	req, err := http.NewRequestWithContext(ctx, "POST", base+"/v1/dev/tokens", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	var out struct {
		Token string `json:"token"`
	}
	if err := do(req, &out); err != nil {
		return "", err
	}
	return out.Token, nil
}

func getJSON(ctx context.Context, u, token string, out any) error {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	return do(req, out)
}

func do(req *http.Request, out any) error {
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %s", req.Method, req.URL.Path, resp.Status, raw)
	}
	return json.Unmarshal(raw, out)
}

// waitReady polls a gateway's /readyz (NATS and every upstream serving).
func waitReady(ctx context.Context, base string, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	c := &http.Client{Timeout: 2 * time.Second}
	var last error
	for {
		resp, err := c.Get(base + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("/readyz: %s", resp.Status)
		}
		last = err
		if ok, perr := p.exited(); ok {
			return fmt.Errorf("%s exited: %v (log %s)", p.name, perr, p.log)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %v (log %s)", base, last, p.log)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// forgeryRefused: the gateway's NATS user cannot publish delivery's
// message.created; the stream the audit log consumes never holds it.
func (r *rig) forgeryRefused(t *testing.T, ctx context.Context) {
	nc, js, err := r.natsAs("gateway")
	must(t, err)
	defer nc.Close()
	subject := natsx.Tenant(natsx.SubjectMessageCreated, "rig-forgery", "patients/p1")
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = js.Publish(pctx, subject, []byte("forged"), jetstream.WithMsgID("rig-forged-1"))
	cancel()
	if err == nil {
		t.Fatal("the gateway's NATS user published a delivery event")
	}
	dnc, djs, err := r.natsAs("delivery")
	must(t, err)
	defer dnc.Close()
	str, err := djs.Stream(ctx, natsx.StreamDelivery)
	must(t, err)
	if _, err := str.GetLastMsgForSubject(ctx, subject); err == nil {
		t.Fatal("the forged event is in the delivery stream")
	}
	t.Logf("the gateway's forged %s was refused and is not in %s", subject, natsx.StreamDelivery)
}

// killNATSLeader SIGKILLs the server leading the delivery stream, waits,
// and restarts it.
func (r *rig) killNATSLeader(ctx context.Context) (time.Time, error) {
	nc, js, err := r.natsAs("delivery")
	if err != nil {
		return time.Time{}, err
	}
	defer nc.Close()
	str, err := js.Stream(ctx, natsx.StreamDelivery)
	if err != nil {
		return time.Time{}, err
	}
	info, err := str.Info(ctx)
	if err != nil {
		return time.Time{}, err
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return time.Time{}, fmt.Errorf("stream %s reports no cluster leader", natsx.StreamDelivery)
	}
	leader := info.Cluster.Leader
	i := int(leader[len(leader)-1] - '1')
	if i < 0 || i >= len(r.nats) {
		return time.Time{}, fmt.Errorf("leader %q is none of the rig's servers", leader)
	}
	r.t.Logf("killing %s, leader of %s (replicas %d)", leader, natsx.StreamDelivery, len(info.Cluster.Replicas)+1)
	r.nats[i].stop(syscall.SIGKILL, 0)
	select {
	case <-time.After(5 * time.Second):
	case <-ctx.Done():
	}
	if err := r.nats[i].start(); err != nil {
		return time.Time{}, err
	}
	if err := waitNATS(ctx, r.natsHosts[i], r.nats[i]); err != nil {
		return time.Time{}, err
	}
	return time.Now(), nil
}

// cutGateway takes gateway host g1's link down (its clients' streams go
// silent and fail over; its senders time out and retry on g2), then up.
func (r *rig) cutGateway(ctx context.Context) (time.Time, error) {
	g1 := r.gw[0].host
	if err := g1.cut(true); err != nil {
		return time.Time{}, err
	}
	select {
	case <-time.After(8 * time.Second):
	case <-ctx.Done():
	}
	if err := g1.cut(false); err != nil {
		return time.Time{}, err
	}
	return time.Now(), waitReady(ctx, r.gwURLs[0], r.gw[0])
}

// restartPostgres stops PostgreSQL (fast shutdown), leaves it down a few
// seconds, and starts it again.
func (r *rig) restartPostgres(ctx context.Context) (time.Time, error) {
	r.pg.stop(syscall.SIGINT, 30*time.Second)
	select {
	case <-time.After(4 * time.Second):
	case <-ctx.Done():
	}
	if err := r.startPostgres(ctx); err != nil {
		return time.Time{}, err
	}
	return time.Now(), nil
}

// rollingRestart SIGTERMs each gateway, waiting for it to serve again
// before the next, then every service, one replica at a time. Gateways go
// first so that their restarts fall inside the load run whatever the
// services' restarts take (ten of them take ~20 s), and recipients' streams
// must fail over and resume.
func (r *rig) rollingRestart(ctx context.Context) (time.Time, error) {
	for i, g := range r.gw {
		g.stop(syscall.SIGTERM, 15*time.Second)
		if err := g.start(); err != nil {
			return time.Time{}, err
		}
		if err := waitReady(ctx, r.gwURLs[i], g); err != nil {
			return time.Time{}, err
		}
	}
	for _, svc := range append([]string{"demoprovider"}, localcluster.Services...) {
		for _, h := range r.svcHosts {
			if err := restart(ctx, r.svc[svc+"@"+h.name], syscall.SIGTERM, fmt.Sprintf("%s:%d", h.ip, servicePorts[svc])); err != nil {
				return time.Time{}, err
			}
		}
	}
	return time.Now(), nil
}

// killDelivery SIGKILLs the first host's delivery replica while its outbox
// relay is busy (rows still unpublished, when the rig catches it), and
// restarts it after a few seconds.
func (r *rig) killDelivery(ctx context.Context) (time.Time, error) {
	p := r.svc["delivery@"+r.svcHosts[0].name]
	db, err := sql.Open("pgx", r.dsn("delivery"))
	if err != nil {
		return time.Time{}, err
	}
	defer db.Close()
	// Catch the relay with rows still to publish (no event says so: poll).
	pending := 0
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	give := time.After(5 * time.Second)
poll:
	for {
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM outbox`).Scan(&pending); err != nil {
			return time.Time{}, err
		}
		if pending > 0 {
			break
		}
		select {
		case <-tick.C:
		case <-give:
			break poll // kill it anyway: the relay was never caught with rows
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
	p.stop(syscall.SIGKILL, 0)
	r.t.Logf("killed %s under load, %d outbox rows not yet published", p.name, pending)
	select {
	case <-time.After(3 * time.Second):
	case <-ctx.Done():
	}
	if err := p.start(); err != nil {
		return time.Time{}, err
	}
	return time.Now(), waitTCP(ctx, fmt.Sprintf("%s:%d", r.svcHosts[0].ip, servicePorts["delivery"]), p)
}
