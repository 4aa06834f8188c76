package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/clinicchat/clinicchat/cmd/clinicchat/allinone"
	"github.com/clinicchat/clinicchat/gateway"
	"github.com/clinicchat/clinicchat/services/platform/ratelimit"
	"github.com/clinicchat/clinicchat/services/platform/testkit"
)

// hotHarness is a real all-in-one (every service, SQLite, embedded NATS)
// whose gateway serves sends and markReads either by hand (hotpath.go) or
// through grpc-gateway's generated handlers.
type hotHarness struct {
	t    *testing.T
	in   *allinone.Instance
	gw   *gateway.Server
	base string
	// served counts the pairs hotpath.go served (both).
	served int
}

// sendBurst is every identity's send budget in the harness (the limit never
// refills within a test: one send an hour).
const sendBurst = 12

func newHotHarness(t *testing.T) *hotHarness {
	t.Helper()
	var gws []*gateway.Server
	gateway.CaptureServers(t, func(s *gateway.Server) { gws = append(gws, s) })
	cfg := allinone.Config{HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", DataDir: t.TempDir(), Dev: true,
		ArchiveAfter: 8760 * time.Hour, ArchiveSweepInterval: time.Hour, StepUpWindow: 5 * time.Minute,
		DrainTimeout: 5 * time.Second,
		Limits:       ratelimit.Config{SendsPerSecond: 1.0 / 3600, SendBurst: sendBurst}}
	in, err := allinone.Start(context.Background(), cfg, testkit.Logger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = in.Stop() })
	require.Len(t, gws, 1)
	return &hotHarness{t: t, in: in, gw: gws[0], base: "http://" + in.HTTPAddr}
}

func (h *hotHarness) token(subject, role, practice string) string {
	h.t.Helper()
	tok, err := h.in.DevIssuer.Issue(subject, role, practice, "Name of "+subject, 0)
	require.NoError(h.t, err)
	return tok
}

// hotRequest is one request of the differential test.
type hotRequest struct {
	path  string
	token string // "" sends no Authorization header
	body  string
	// noBody sends none; chunked sends the body without a Content-Length.
	noBody, chunked bool
	// contentType is "application/json" unless set ("-": none).
	contentType string
	header      http.Header
}

// setHeaders sets r's headers on req.
func (r hotRequest) setHeaders(req *http.Request) {
	switch r.contentType {
	case "":
		req.Header.Set("Content-Type", "application/json")
	case "-":
	default:
		req.Header.Set("Content-Type", r.contentType)
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	for k, vs := range r.header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
}

// hot says whether the hand-written handlers serve r.
func (r hotRequest) hot() bool {
	req := httptest.NewRequest(http.MethodPost, r.path, nil)
	r.setHeaders(req)
	return gateway.HotServes(req)
}

// hotAnswer is what a client sees of an answer, and the metrics it moved.
type hotAnswer struct {
	Status  int
	Header  http.Header
	Body    string
	Metrics map[string]float64
}

func (h *hotHarness) send(r hotRequest) hotAnswer {
	h.t.Helper()
	var body io.Reader
	if !r.noBody {
		body = strings.NewReader(r.body)
		if r.chunked {
			body = io.MultiReader(body) // no length known to net/http
		}
	}
	req, err := http.NewRequest(http.MethodPost, h.base+r.path, body)
	require.NoError(h.t, err)
	r.setHeaders(req)
	before := h.metrics()
	resp, err := http.DefaultClient.Do(req)
	require.NoError(h.t, err)
	raw, err := io.ReadAll(resp.Body)
	require.NoError(h.t, err)
	require.NoError(h.t, resp.Body.Close())
	resp.Header.Del("Date")
	moved := map[string]float64{}
	for k, v := range h.metrics() {
		if d := v - before[k]; d != 0 && !strings.Contains(k, "_sum") {
			moved[k] = d
		}
	}
	return hotAnswer{Status: resp.StatusCode, Header: resp.Header, Body: string(raw), Metrics: moved}
}

// metrics are the gateway's request and limit counters and its latency
// histogram's counts, by series.
func (h *hotHarness) metrics() map[string]float64 {
	h.t.Helper()
	mfs, err := h.gw.Gatherer().Gather()
	require.NoError(h.t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "clinicchat_gateway_http_requests_total", "clinicchat_gateway_limited_total",
			"clinicchat_gateway_http_request_duration_seconds":
		default:
			continue
		}
		for _, m := range mf.GetMetric() {
			k := mf.GetName() + labels(m.GetLabel())
			if m.GetCounter() != nil {
				out[k] = m.GetCounter().GetValue()
			}
			if m.GetHistogram() != nil {
				out[k+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

func labels(ls []*dto.LabelPair) string {
	parts := make([]string, 0, len(ls))
	for _, l := range ls {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, ",") + "}"
}

// both sends r through the generated handlers and by hand, in the order
// given (hotFirst), and requires the same answer. It returns it.
func (h *hotHarness) both(name string, r hotRequest, hotFirst bool) hotAnswer {
	h.t.Helper()
	one := func(hot bool) hotAnswer {
		h.gw.SetHotPath(hot)
		defer h.gw.SetHotPath(true)
		return h.send(r)
	}
	var hot, gen hotAnswer
	if r.hot() {
		h.served++
	}
	if hotFirst {
		hot, gen = one(true), one(false)
	} else {
		gen, hot = one(false), one(true)
	}
	require.Equal(h.t, gen, hot, "%s: the hand-written handler answered otherwise than the generated one", name)
	return hot
}

// reasonOf is an error body's ErrorInfo reason ("" for a success).
func reasonOf(t *testing.T, a hotAnswer) string {
	t.Helper()
	if a.Status == http.StatusOK {
		return ""
	}
	var st struct {
		Details []struct {
			Reason string `json:"reason"`
		} `json:"details"`
	}
	require.NoError(t, json.Unmarshal([]byte(a.Body), &st), a.Body)
	require.NotEmpty(t, st.Details, a.Body)
	return st.Details[0].Reason
}

// TestHotPathIsTheGeneratedPath sends the same requests — successes, every
// error these two routes give, odd bodies, paths and headers — to a real
// all-in-one through hotpath.go's handlers and through grpc-gateway's
// generated ones, and requires the same status, headers (Date aside), body
// and metrics from both.
func TestHotPathIsTheGeneratedPath(t *testing.T) {
	h := newHotHarness(t)
	const practice = allinone.DemoPractice
	n := 0
	staff := func() string { // a new staff member per case: each has its own send budget
		n++
		return h.token(fmt.Sprintf("staff-%d", n), "dentist", practice)
	}
	setup := h.token("dr-lee", "dentist", practice)
	create := func(patient string) string {
		a := h.send(hotRequest{path: "/v1/conversations", token: setup, body: `{"patient":"patients/` + patient + `"}`})
		require.Equal(t, http.StatusOK, a.Status, a.Body)
		var c struct{ Name string }
		require.NoError(t, json.Unmarshal([]byte(a.Body), &c))
		return c.Name
	}
	alice, carol := create("alice"), create("carol")
	sendPath := func(conv string) string { return "/v1/" + conv + "/messages" }
	readPath := func(conv string) string { return "/v1/" + conv + ":markRead" }
	// A message of the patient's, for markRead's upTo.
	patient := h.token("alice", "patient", practice)
	first := h.send(hotRequest{path: sendPath(alice), token: patient, body: `{"text":"My crown feels loose","requestId":"p-1"}`})
	require.Equal(t, http.StatusOK, first.Status, first.Body)
	var firstMsg struct{ Name string }
	require.NoError(t, json.Unmarshal([]byte(first.Body), &firstMsg))

	reasons := map[string]bool{}
	// The cases the hand-written handlers leave to the generated ones.
	fallback := map[string]bool{"escaped conversation id": true, "two tokens": true, "form body": true,
		"text/plain body": true, "JSON with charset": true, "grpc-timeout": true, "TE trailers": true,
		"markRead empty id": true, "markRead XML": true}
	check := func(name string, r hotRequest) hotAnswer {
		t.Helper()
		require.Equal(t, !fallback[name], r.hot(), "%s: served by hand", name)
		a := h.both(name+" (generated first)", r, false)
		b := h.both(name+" (hand-written first)", r, true)
		require.Equal(t, a.Status, b.Status, name)
		reasons[reasonOf(t, a)] = true
		return a
	}

	var tok, tok0 string
	// Sends that succeed: the second of a pair is the first's repeat (same
	// requestId), so both answer the same message.
	for i, body := range []string{
		`{"text":"Your crown is ready","requestId":"%s"}`,
		` { "requestId" : "%s", "text" : "Caf\u00e9 \ud83d\ude00 \"quoted\"\n", "sensitive" : true } `,
		`{"text":"With a parent","parent":"conversations/ignored","requestId":"%s","attachments":[]}`,
	} {
		tok = staff()
		if i == 0 {
			tok0 = tok
		}
		for _, hotFirst := range []bool{false, true} {
			rid := fmt.Sprintf("ok-%d-%v", i, hotFirst)
			a := h.both(fmt.Sprintf("send %d", i), hotRequest{path: sendPath(alice), token: tok, body: fmt.Sprintf(body, rid)}, hotFirst)
			require.Equal(t, http.StatusOK, a.Status, a.Body)
		}
	}
	require.Equal(t, 6, h.served, "every success so far served by hand")
	// The patient's side.
	for _, hotFirst := range []bool{false, true} {
		a := h.both("patient send", hotRequest{path: sendPath(alice), token: patient,
			body: fmt.Sprintf(`{"text":"Thanks","requestId":"p-%v"}`, hotFirst)}, hotFirst)
		require.Equal(t, http.StatusOK, a.Status, a.Body)
	}
	// The same with X-Request-Id and X-Forwarded-* headers and a query.
	tok = staff()
	hdr := http.Header{"X-Request-Id": {"rid-1", "rid-2"}, "X-Forwarded-For": {"203.0.113.9"}, "X-Forwarded-Host": {"portal.example"}}
	for _, hotFirst := range []bool{false, true} {
		a := h.both("send with headers", hotRequest{path: sendPath(alice) + "?text=ignored", token: tok, header: hdr,
			body: fmt.Sprintf(`{"text":"Headers","requestId":"h-%v"}`, hotFirst)}, hotFirst)
		require.Equal(t, http.StatusOK, a.Status, a.Body)
	}

	require.Equal(t, 10, h.served, "every success so far served by hand")
	long := strings.Repeat("a", 10_001)
	escaped := strings.Repeat(`\u0061`, 12_000) // 72 KB of body: past the fast decoder's 64 KiB
	huge := `{"text":"` + strings.Repeat("a", 1<<20) + `"}`
	// Bodies of exactly the JSON limit (1 MiB) and one byte more.
	atLimit := `{"requestId":"r","text":"` + strings.Repeat("a", 1<<20-len(`{"requestId":"r","text":""}`)) + `"}`
	overLimit := atLimit + " "
	other := h.token("dr-other", "dentist", "another-practice")
	emma := h.token("emma", "patient", practice)
	sends := []struct {
		name string
		r    hotRequest
	}{
		{"request id reused", hotRequest{path: sendPath(alice), token: tok0, body: `{"text":"Other words","requestId":"ok-0-false"}`}},
		{"text too long", hotRequest{path: sendPath(alice), token: staff(), body: `{"requestId":"r","text":"` + long + `"}`}},
		{"escaped text too long", hotRequest{path: sendPath(alice), token: staff(), body: `{"requestId":"r","text":"` + escaped + `"}`}},
		{"empty text", hotRequest{path: sendPath(alice), token: staff(), body: `{"text":"   ","requestId":"r"}`}},
		{"empty body", hotRequest{path: sendPath(alice), token: staff(), noBody: true, contentType: "-"}},
		{"unknown field", hotRequest{path: sendPath(alice), token: staff(), body: `{"text":"hi","sensitve":true,"requestId":"r"}`}},
		{"snake case field", hotRequest{path: sendPath(alice), token: staff(), body: `{"text":"hi","request_id":"x"}`}},
		{"wrong type", hotRequest{path: sendPath(alice), token: staff(), body: `{"text":5}`}},
		{"field twice", hotRequest{path: sendPath(alice), token: staff(), body: `{"text":"a","text":"b"}`}},
		{"null", hotRequest{path: sendPath(alice), token: staff(), body: `null`}},
		{"malformed JSON", hotRequest{path: sendPath(alice), token: staff(), body: `{"text":`}},
		{"trailing bytes", hotRequest{path: sendPath(alice), token: staff(), body: `{"text":"a"} x`}},
		{"invalid UTF-8", hotRequest{path: sendPath(alice), token: staff(), body: "{\"text\":\"\xff\"}"}},
		{"body over 1 MiB", hotRequest{path: sendPath(alice), token: staff(), body: huge}},
		{"body of 1 MiB", hotRequest{path: sendPath(alice), token: staff(), body: atLimit}},
		{"body of 1 MiB, chunked", hotRequest{path: sendPath(alice), token: staff(), body: atLimit, chunked: true}},
		{"body of 1 MiB and a byte", hotRequest{path: sendPath(alice), token: staff(), body: overLimit}},
		{"body of 1 MiB and a byte, chunked", hotRequest{path: sendPath(alice), token: staff(), body: overLimit, chunked: true}},
		{"body over 1 MiB, chunked", hotRequest{path: sendPath(alice), token: staff(), body: huge, chunked: true}},
		{"unknown attachment", hotRequest{path: sendPath(alice), token: staff(), body: `{"text":"x","attachments":["attachments/nope"],"requestId":"r"}`}},
		{"opted out", hotRequest{path: sendPath(carol), token: staff(), body: `{"text":"hi","requestId":"r"}`}},
		{"no such conversation", hotRequest{path: sendPath("conversations/nope"), token: staff(), body: `{"text":"hi","requestId":"r"}`}},
		{"odd conversation id", hotRequest{path: sendPath("conversations/a:b"), token: staff(), body: `{"text":"hi","requestId":"r"}`}},
		{"escaped conversation id", hotRequest{path: sendPath("conversations/%41b"), token: staff(), body: `{"text":"hi","requestId":"r"}`}},
		{"another patient", hotRequest{path: sendPath(alice), token: emma, body: `{"text":"hi","requestId":"r"}`}},
		{"another practice", hotRequest{path: sendPath(alice), token: other, body: `{"text":"hi","requestId":"r"}`}},
		{"no token", hotRequest{path: sendPath(alice), body: `{"text":"hi","requestId":"r"}`}},
		{"no token, bad JSON", hotRequest{path: sendPath(alice), body: `{`}},
		{"bad token", hotRequest{path: sendPath(alice), token: "not-a-jwt", body: `{"text":"hi","requestId":"r"}`}},
		{"two tokens", hotRequest{path: sendPath(alice), token: staff(), header: http.Header{"Authorization": {"Bearer " + other}}, body: `{"text":"hi","requestId":"r"}`}},
		{"basic auth", hotRequest{path: sendPath(alice), header: http.Header{"Authorization": {"Basic YTpi"}}, body: `{"text":"hi","requestId":"r"}`}},
		{"form body", hotRequest{path: sendPath(alice), token: staff(), contentType: "application/x-www-form-urlencoded", body: `text=hi`}},
		{"text/plain body", hotRequest{path: sendPath(alice), token: staff(), contentType: "text/plain", body: `{"text":"   ","requestId":"r"}`}},
		{"JSON with charset", hotRequest{path: sendPath(alice), token: staff(), contentType: "application/json; charset=utf-8", body: `{"text":"   ","requestId":"r"}`}},
		{"grpc-timeout", hotRequest{path: sendPath(alice), token: staff(), header: http.Header{"Grpc-Timeout": {"bad"}}, body: `{"text":"   ","requestId":"r"}`}},
		{"TE trailers", hotRequest{path: sendPath(alice), token: staff(), header: http.Header{"Te": {"trailers"}}, body: `{"text":"   ","requestId":"r"}`}},
	}
	for _, c := range sends {
		check(c.name, c.r)
	}

	// Rate limited: an identity whose send budget is spent.
	limited := staff()
	for i := range sendBurst {
		a := h.send(hotRequest{path: sendPath(alice), token: limited, body: fmt.Sprintf(`{"text":"burst %d","requestId":"b-%d"}`, i, i)})
		require.Equal(t, http.StatusOK, a.Status, a.Body)
	}
	limitedReq := hotRequest{path: sendPath(alice), token: limited, body: `{"text":"one more","requestId":"b-x"}`}
	for try := 0; ; try++ { // Retry-After counts whole seconds: a pair may straddle one
		h.gw.SetHotPath(false)
		gen := h.send(limitedReq)
		h.gw.SetHotPath(true)
		hot := h.send(limitedReq)
		if gen.Header.Get("Retry-After") != hot.Header.Get("Retry-After") && try < 3 {
			continue
		}
		require.Equal(t, gen, hot, "rate limited")
		require.Equal(t, http.StatusTooManyRequests, hot.Status, hot.Body)
		require.NotEmpty(t, hot.Header.Get("Retry-After"))
		reasons[reasonOf(t, hot)] = true
		break
	}

	// markRead. The first one changes the thread; each case then answers
	// from the same state.
	staffTok := staff()
	upTo := `{"upTo":"` + firstMsg.Name + `"}`
	require.Equal(t, http.StatusOK, h.send(hotRequest{path: readPath(alice), token: staffTok, body: upTo}).Status)
	require.Equal(t, http.StatusOK, h.send(hotRequest{path: readPath(alice), token: patient, noBody: true, contentType: "-"}).Status)
	reads := []struct {
		name string
		r    hotRequest
	}{
		{"markRead up to", hotRequest{path: readPath(alice), token: staffTok, body: upTo}},
		{"markRead everything", hotRequest{path: readPath(alice), token: staffTok, body: `{}`}},
		{"markRead no body", hotRequest{path: readPath(alice), token: patient, noBody: true, contentType: "-"}},
		{"markRead with name", hotRequest{path: readPath(alice), token: staffTok, body: `{"name":"conversations/ignored","upTo":"` + firstMsg.Name + `"}`}},
		{"markRead headers", hotRequest{path: readPath(alice), token: staffTok, header: hdr, body: upTo}},
		{"markRead bad upTo", hotRequest{path: readPath(alice), token: staffTok, body: `{"upTo":"garbage"}`}},
		{"markRead upTo elsewhere", hotRequest{path: readPath(alice), token: staffTok, body: `{"upTo":"conversations/nope/messages/m1"}`}},
		{"markRead unknown message", hotRequest{path: readPath(alice), token: staffTok, body: `{"upTo":"` + alice + `/messages/nope"}`}},
		{"markRead unknown field", hotRequest{path: readPath(alice), token: staffTok, body: `{"upto":"x"}`}},
		{"markRead malformed", hotRequest{path: readPath(alice), token: staffTok, body: `{"upTo"`}},
		{"markRead too large", hotRequest{path: readPath(alice), token: staffTok, body: `{"upTo":"` + strings.Repeat("m", 1<<20) + `"}`}},
		{"markRead no conversation", hotRequest{path: readPath("conversations/nope"), token: staffTok, body: `{}`}},
		{"markRead odd id", hotRequest{path: readPath("conversations/a:markRead"), token: staffTok, body: `{}`}},
		{"markRead empty id", hotRequest{path: "/v1/conversations/:markRead", token: staffTok, body: `{}`}},
		{"markRead another patient", hotRequest{path: readPath(alice), token: emma, body: `{}`}},
		{"markRead another practice", hotRequest{path: readPath(alice), token: other, body: `{}`}},
		{"markRead no token", hotRequest{path: readPath(alice), body: `{}`}},
		{"markRead bad token", hotRequest{path: readPath(alice), token: "x.y.z", body: `{}`}},
		{"markRead XML", hotRequest{path: readPath(alice), token: staffTok, contentType: "application/xml", body: `<a/>`}},
	}
	for _, c := range reads {
		check(c.name, c.r)
	}

	for _, want := range []string{"", "INVALID_ARGUMENT", "REQUEST_ID_REUSED", "NOT_FOUND", "CHAT_OPTED_OUT",
		"UNAUTHENTICATED", "REQUEST_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE", "RESOURCE_EXHAUSTED"} {
		require.True(t, reasons[want], "no case answered reason %q (got %v)", want, reasons)
	}
	t.Logf("reasons compared: %v", reasons)
}
