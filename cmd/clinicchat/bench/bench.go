// Package bench is clinicchat's load tool (`clinicchat bench`): against any
// running deployment in dev mode (the all-in-one, or deploy/local/up) it
// creates a practice's patients and threads, opens each recipient's live
// event stream, sends flat out with C senders (or at a target rate) through
// the HTTP gateway or over gRPC, marks threads read, and reports sends/s,
// send → ack and send → recipient-stream latency, receipts/s, errors by
// reason, and messages lost (acknowledged, never seen by the recipient) or
// duplicated (seen twice). Given the server's pid or /metrics URL it adds the
// server's CPU per message and peak RSS.
//
// Tokens come from the deployment's dev issuer (POST /v1/dev/tokens), so the
// tool runs against dev-mode deployments; a production deployment is measured
// through a staging copy of it in dev mode.
package bench

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config is what one run does.
type Config struct {
	// HTTPURL is the gateway's base URL (http://127.0.0.1:8080).
	HTTPURL string
	// GRPCAddr, when set, sends over gRPC to this address instead of
	// through the HTTP gateway (streams and set-up still use HTTP).
	GRPCAddr string
	// Practice is the practice the run creates its patients in; empty
	// picks a new one ("bench-<time>"), so runs never see each other.
	Practice string
	// Mode is "send" (the default: senders send, recipients' streams
	// count the messages) or "read" (read receipts flat out: see runReads).
	Mode string
	// Senders is the number of concurrent senders, each a staff user
	// writing to a thread of its own (closed loop: send, wait for the ack).
	// In read mode it is the number of threads, each with its patient
	// marking read and its staff sender's stream open.
	Senders int
	// Messages is how many messages the run sends in all; in read mode,
	// how many markRead calls (receipts) it makes in all.
	Messages int
	// Rate, when above zero, paces the sends at this many per second in
	// all (open loop, at most Senders in flight) instead of flat out.
	Rate float64
	// TextBytes is the size of each message's text.
	TextBytes int
	// MarkReadEvery makes each recipient mark its thread read after every
	// this many messages it received (0: never).
	MarkReadEvery int
	// Wait bounds how long the run waits for recipients' streams to catch up
	// after the last ack before it counts what never arrived as lost.
	Wait time.Duration
	// Prefill sends this many messages into each thread before the measured
	// run (not counted), which its patient then marks read: how a send's
	// cost grows with its thread's length.
	Prefill int
	// IdleStreams, when above zero, opens this many /v1/events streams of
	// staff users of another practice (IdleStreamsPerUser each) before
	// the run and holds them open, idle, through it: what a send costs
	// with thousands of unrelated connections open (issue 9).
	IdleStreams int
	// ServerPID and MetricsURL, when set, let the run measure the server's
	// CPU and memory (/proc/<pid>, or process_* series on /metrics).
	ServerPID  int
	MetricsURL string
	// Progress, when set, receives a progress line while the run goes on.
	Progress func(sent, total int)

	// FailoverURLs are more gateways of the same deployment (for fault
	// tests). Thread i starts on the i-th of HTTPURL and these; a stream
	// that ends, or reads nothing for StreamIdle, reconnects to the next
	// with Last-Event-ID, and a retrying sender's next attempt goes to
	// the next.
	FailoverURLs []string
	// StreamIdle treats a stream that reads nothing, not even a
	// keep-alive, for this long as ended (0: never).
	StreamIdle time.Duration
	// Retry makes a sender retry a failed send with the same requestId
	// until it is acknowledged or ctx ends, as a careful client does;
	// every failed attempt counts in Errors.
	Retry bool
	// AttemptTimeout bounds one send attempt (0: none).
	AttemptTimeout time.Duration
	// Duration, when above zero, stops starting sends after this long
	// (Messages still caps them).
	Duration time.Duration
	// Observe, when set, is called after every send attempt with its
	// start, its duration and the error's reason ("" when acknowledged).
	Observe func(start time.Time, took time.Duration, reason string)
}

// Flags registers the configuration's flags on fs.
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.HTTPURL, "url", "http://127.0.0.1:8080", "the gateway's base URL")
	fs.StringVar(&c.GRPCAddr, "grpc-addr", "", "send over gRPC to this address instead of through the HTTP gateway")
	fs.StringVar(&c.Mode, "mode", ModeSend, `"send": staff send, patients' streams count the messages; "read": threads prefilled with --messages/--senders staff messages, patients mark read one message at a time flat out, the staff senders' streams count the receipts`)
	fs.StringVar(&c.Practice, "practice", "", "practice to create the run's patients in (default: a new bench-<time> practice)")
	fs.IntVar(&c.Senders, "senders", 8, "concurrent senders, each a staff user with a thread of its own (read mode: threads, each with a patient marking read)")
	fs.IntVar(&c.Messages, "messages", 2000, "messages to send in all (read mode: markRead calls in all)")
	fs.Float64Var(&c.Rate, "rate", 0, "target sends per second in all (0: flat out, closed loop)")
	fs.IntVar(&c.TextBytes, "text-bytes", 64, "size of each message's text")
	fs.IntVar(&c.MarkReadEvery, "mark-read-every", 10, "each recipient marks its thread read after this many messages (0: never)")
	fs.DurationVar(&c.Wait, "wait", 30*time.Second, "how long to wait for recipients' streams after the last ack")
	fs.IntVar(&c.Prefill, "prefill", 0, "messages sent into each thread before the measured run (not counted), then marked read")
	fs.IntVar(&c.IdleStreams, "idle-streams", 0, fmt.Sprintf("open this many /v1/events streams of staff of another practice (%d per user) before the run and hold them open, idle, through it", IdleStreamsPerUser))
	fs.IntVar(&c.ServerPID, "server-pid", 0, "the server's process id (same machine): adds its CPU per message and peak RSS")
	fs.StringVar(&c.MetricsURL, "metrics-url", "", "the server's Prometheus /metrics URL, or a distributed deployment's, comma separated (the gateway's and each service's: their sums): adds its CPU per message, RSS, database commits per message and how long after the last ack it caught up")
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Mode == "" {
		c.Mode = ModeSend
	}
	if c.Mode != ModeSend && c.Mode != ModeRead {
		errs = append(errs, errors.New(`--mode must be "send" or "read"`))
	}
	if !strings.HasPrefix(c.HTTPURL, "http://") && !strings.HasPrefix(c.HTTPURL, "https://") {
		errs = append(errs, errors.New("--url must be an http:// or https:// URL"))
	}
	if c.Senders < 1 || c.Senders > 1000 {
		errs = append(errs, errors.New("--senders must be 1 to 1000"))
	}
	if c.Messages < 1 {
		errs = append(errs, errors.New("--messages must be at least 1"))
	}
	if c.Rate < 0 {
		errs = append(errs, errors.New("--rate must not be negative"))
	}
	if c.TextBytes < 1 || c.TextBytes > 10000 {
		errs = append(errs, errors.New("--text-bytes must be 1 to 10000 (SPEC: text up to 10,000 characters)"))
	}
	if c.IdleStreams < 0 || c.IdleStreams > MaxIdleStreams {
		errs = append(errs, fmt.Errorf("--idle-streams must be 0 to %d", MaxIdleStreams))
	}
	if c.MarkReadEvery < 0 {
		errs = append(errs, errors.New("--mark-read-every must not be negative"))
	}
	if c.Prefill < 0 || c.Prefill > 1_000_000 {
		errs = append(errs, errors.New("--prefill must be 0 to 1,000,000"))
	}
	if c.Mode == ModeRead && c.Prefill > 0 {
		errs = append(errs, errors.New("--prefill is for send mode (read mode fills its threads with the messages it marks read)"))
	}
	if c.Mode == ModeRead && c.Messages < c.Senders {
		errs = append(errs, errors.New("--messages must be at least --senders in read mode (each thread marks read at least once)"))
	}
	if c.Wait <= 0 {
		errs = append(errs, errors.New("--wait must be positive"))
	}
	return errors.Join(errs...)
}

// The modes of a run.
const (
	ModeSend = "send"
	ModeRead = "read"
)

// Result is what a run measured. In read mode the send fields are the
// markRead calls': Attempted/Acked count markReads, SendsPerS is
// markReads acknowledged per second, Ack is markRead → acknowledgement and
// Stream markRead → the READ receipt on the staff sender's stream; Lost is
// a markRead acknowledged whose receipt never reached that stream,
// Duplicated a receipt seen twice, Receipts and ReceiptsPerS the receipts
// seen there (per second of the run up to the last one seen).
type Result struct {
	Mode      string `json:"mode"`
	Practice  string `json:"practice"`
	Transport string `json:"transport"`
	Senders   int    `json:"senders"`
	// IdleStreams is the other practice's streams held open through the
	// run (Config.IdleStreams).
	IdleStreams int     `json:"idleStreams,omitempty"`
	Attempted   int     `json:"attempted"`
	Acked       int     `json:"acked"`
	Seconds     float64 `json:"seconds"`
	SendsPerS   float64 `json:"sendsPerSecond"`
	// Ack is send → acknowledgement; Stream is send → the recipient's
	// stream (message.created read off the SSE connection).
	Ack    Latency `json:"ack"`
	Stream Latency `json:"stream"`
	// AckToStream is the acknowledgement → the recipient's stream, per
	// message (negative when the stream had it first): the part of Stream
	// after the send's own commit path.
	AckToStream Latency `json:"ackToStream"`
	// Receipts counts markRead calls that succeeded, and their rate.
	Receipts     int     `json:"receipts"`
	ReceiptsPerS float64 `json:"receiptsPerSecond"`
	// Errors counts failed calls by reason (SPEC reason, HTTP status or
	// transport error).
	Errors map[string]int `json:"errors"`
	// Lost: acknowledged but never seen on the recipient's stream within
	// the wait. Duplicated: seen more than once.
	Lost       int `json:"lost"`
	Duplicated int `json:"duplicated"`
	// Resets counts `reset` events on the recipients' streams.
	Resets int `json:"resets"`
	// OutOfOrder counts messages a recipient read before one of its
	// thread sent (and acknowledged) earlier.
	OutOfOrder int `json:"outOfOrder"`
	// Extra counts messages read on a recipient's stream that no
	// acknowledged send returned: with Retry, a retry that made a second
	// message instead of returning the first (requestId not honoured).
	Extra int `json:"extra"`
	// Reconnects counts streams reconnecting to a gateway (failover).
	Reconnects int `json:"reconnects"`
	// AckedNames are the acknowledged messages' names.
	AckedNames []string `json:"-"`
	// Timeline is every acknowledged message's send time, send → ack and
	// send → stream, in send order (send mode; WriteTimeline).
	Timeline []Sample `json:"-"`
	// Server figures, when a pid or metrics URL was given.
	Server *ServerFigures `json:"server,omitempty"`
	// Machine is what a system call and a thread wake-up cost on the
	// client's machine, measured before the run (nil where it could not be).
	Machine *Machine `json:"machine,omitempty"`
}

// ServerFigures are the server's CPU and memory over the run.
type ServerFigures struct {
	// CPUMsPerMessage is the server's CPU (user+system) from the first send
	// until the recipients saw the last message, per acknowledged message.
	CPUMsPerMessage float64 `json:"cpuMsPerMessage"`
	// CPUMsPerMessageUntilIdle counts on until the server is idle again
	// (below 5% of a core for a second): everything the messages caused
	// (projections, receipts, notifications, audit) included.
	CPUMsPerMessageUntilIdle float64 `json:"cpuMsPerMessageUntilIdle"`
	// BusyAfterLastAckS is how long the server kept working after the last
	// acknowledgement: at least until the recipients' streams had every
	// message, and on while projections, receipts and the audit log catch up.
	BusyAfterLastAckS float64 `json:"busyAfterLastAckSeconds"`
	// CaughtUpAfterLastAckS is when, after the last acknowledgement, the
	// deployment first had nothing queued: every durable consumer
	// (projections, receipts, audit) and every outbox empty
	// (clinicchat_nats_consumer_*pending_messages and
	// clinicchat_outbox_backlog_events on /metrics, polled every 20 ms
	// once the recipients' streams had every message; so at least that
	// long). Only with a metrics URL that serves those series.
	CaughtUpAfterLastAckS float64 `json:"caughtUpAfterLastAckSeconds,omitempty"`
	// CommitsPerMessage is the database commits (all the deployment's
	// databases, clinicchat_sqldb_commits_total) per message until idle;
	// only with a metrics URL.
	CommitsPerMessage float64 `json:"commitsPerMessage,omitempty"`
	// PeakRSSMiB is the highest resident set size seen (sampled every
	// 100 ms, or the kernel's high-water mark with a pid).
	PeakRSSMiB float64 `json:"peakRssMiB"`
}

// Failed reports whether the run lost, duplicated or failed anything.
func (r *Result) Failed() bool {
	n := 0
	for _, v := range r.Errors {
		n += v
	}
	return r.Lost > 0 || r.Duplicated > 0 || n > 0 || r.Resets > 0
}

// thread is one sender's conversation with its patient.
type thread struct {
	conv  string
	staff *client
	// staffs is staff on each gateway (FailoverURLs), from the thread's own.
	staffs  []*client
	patient *client
	stream  *stream
}

// Run performs one load run and returns its figures.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// Before any load: the figures are the machine's, not the run's.
	machine, err := measureMachine()
	if err != nil {
		return nil, err
	}
	res, err := run(ctx, cfg)
	if res != nil {
		res.Machine = machine
	}
	return res, err
}

// run is Run after the calibration.
func run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Practice == "" {
		cfg.Practice = fmt.Sprintf("bench-%d", time.Now().UnixNano())
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConns: 4 * cfg.Senders, MaxIdleConnsPerHost: 4 * cfg.Senders,
		IdleConnTimeout: time.Minute}}
	defer hc.CloseIdleConnections()
	base := &client{hc: hc, url: strings.TrimRight(cfg.HTTPURL, "/")}

	threads, err := setUp(ctx, base, cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, th := range threads {
			th.stream.close()
		}
	}()
	idle, err := openIdle(ctx, base, cfg.Practice+"-idle", cfg.IdleStreams)
	defer closeAll(idle)
	if err != nil {
		return nil, err
	}
	var sender messageSender = httpSender{}
	transport := "http"
	if cfg.GRPCAddr != "" {
		gs, err := newGRPCSender(cfg.GRPCAddr)
		if err != nil {
			return nil, err
		}
		defer gs.close()
		sender, transport = gs, "grpc"
	}

	srv := newServerWatch(cfg.ServerPID, cfg.MetricsURL, hc)
	if cfg.Mode == ModeRead {
		var marker readMarker = httpMarker{}
		if gs, ok := sender.(*grpcSender); ok {
			marker = gs
		}
		return runReads(ctx, cfg, threads, marker, transport, srv)
	}
	if cfg.Prefill > 0 {
		if _, err := prefill(ctx, threads, func(int) int { return cfg.Prefill }, true); err != nil {
			return nil, err
		}
		// Measure from a quiet server: the prefill's projections and audit
		// are not the run's.
		if _, err := srv.waitQuiet(ctx, time.Minute); err != nil {
			return nil, err
		}
	}
	if err := srv.start(ctx); err != nil {
		return nil, err
	}
	defer srv.stop()

	res := &Result{Mode: ModeSend, Practice: cfg.Practice, Transport: transport, Senders: cfg.Senders, IdleStreams: cfg.IdleStreams, Errors: map[string]int{}}
	var (
		mu   sync.Mutex
		acks []time.Duration
		sent = map[string]time.Time{} // message name → send start
		// acked is each message's acknowledgement time.
		acked = map[string]time.Time{}
		// ackOrder is each thread's acknowledged messages in order.
		ackOrder = map[string][]string{}
		next     atomic.Int64
		done     atomic.Int64
		pace     pacer
		errsMu   sync.Mutex
		lastAck  time.Time
	)
	countErr := func(reason string) {
		errsMu.Lock()
		res.Errors[reason]++
		errsMu.Unlock()
	}
	text := strings.Repeat("x", cfg.TextBytes)
	start := time.Now()
	if cfg.Rate > 0 {
		pace = pacer{start: start, interval: time.Duration(float64(time.Second) / cfg.Rate), sleep: sleepCtx}
	}
	var wg sync.WaitGroup
	for w, th := range threads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(cfg.Messages) || ctx.Err() != nil || (cfg.Duration > 0 && time.Since(start) > cfg.Duration) {
					return
				}
				if !pace.wait(ctx, i) {
					return
				}
				reqID := "bench-" + strconv.Itoa(w) + "-" + strconv.FormatInt(i, 10)
				t0 := time.Now()
				var name string
				var err error
				for attempt := 0; ; attempt++ {
					th.staff = th.staffs[attempt%len(th.staffs)]
					a0 := time.Now()
					actx, cancel := ctx, context.CancelFunc(func() {})
					if cfg.AttemptTimeout > 0 {
						actx, cancel = context.WithTimeout(ctx, cfg.AttemptTimeout)
					}
					name, err = sender.send(actx, th, text, reqID)
					cancel()
					reason := ""
					if err != nil {
						reason = reasonOf(err)
						countErr(reason)
					}
					if cfg.Observe != nil {
						cfg.Observe(a0, time.Since(a0), reason)
					}
					if err == nil || !cfg.Retry || ctx.Err() != nil {
						break
					}
					select {
					case <-ctx.Done():
					case <-time.After(min(time.Duration(attempt+1)*50*time.Millisecond, time.Second)):
					}
				}
				d := time.Since(t0)
				if err == nil {
					mu.Lock()
					acks = append(acks, d)
					sent[name] = t0
					acked[name] = t0.Add(d)
					ackOrder[th.conv] = append(ackOrder[th.conv], name)
					if now := time.Now(); now.After(lastAck) {
						lastAck = now
					}
					mu.Unlock()
				}
				n := done.Add(1)
				if cfg.Progress != nil {
					cfg.Progress(int(n), cfg.Messages)
				}
			}
		}()
	}

	// Recipients mark read as messages arrive.
	readCtx, stopReads := context.WithCancel(ctx)
	var receipts atomic.Int64
	var readWG sync.WaitGroup
	if cfg.MarkReadEvery > 0 {
		for _, th := range threads {
			readWG.Add(1)
			go func() {
				defer readWG.Done()
				markReads(readCtx, th, cfg.MarkReadEvery, &receipts, countErr)
			}()
		}
	}
	wg.Wait()
	sendEnd := time.Now()
	mu.Lock()
	res.Attempted = int(done.Load())
	res.Acked = len(acks)
	if !lastAck.IsZero() {
		sendEnd = lastAck
	}
	mu.Unlock()
	res.Seconds = sendEnd.Sub(start).Seconds()
	if res.Seconds > 0 {
		res.SendsPerS = float64(res.Acked) / res.Seconds
	}
	res.Ack = summarize(acks)

	// Wait until every acknowledged message reached its recipient's stream.
	expect := map[*stream][]string{}
	owner := map[string]*stream{}
	for _, th := range threads {
		owner[th.conv] = th.stream
	}
	for name := range sent {
		if s := owner[parentOf(name)]; s != nil {
			expect[s] = append(expect[s], name)
		}
	}
	deadline := time.Now().Add(cfg.Wait)
	for s, names := range expect {
		s.waitFor(ctx, names, false, deadline)
	}
	stopReads()
	readWG.Wait()
	var streamLat, afterAck []time.Duration
	for name := range sent {
		res.AckedNames = append(res.AckedNames, name)
	}
	for _, th := range threads {
		order := th.stream.snapshot().order
		res.OutOfOrder += outOfOrder(ackOrder[th.conv], order)
		for _, name := range order {
			if _, ok := sent[name]; !ok {
				res.Extra++
			}
		}
	}
	for s, names := range expect {
		seen := s.snapshot()
		for _, name := range names {
			at, ok := seen.first[name]
			if !ok {
				res.Lost++
				continue
			}
			t0 := sent[name]
			x := Sample{Name: name, Sent: t0, Ack: acked[name].Sub(t0), Stream: at.Sub(t0)}
			res.Timeline = append(res.Timeline, x)
			streamLat = append(streamLat, x.Stream)
			afterAck = append(afterAck, x.Stream-x.Ack)
		}
		res.Duplicated += seen.duplicates
		res.Resets += seen.resets
		res.Reconnects += seen.reconnects
	}
	res.Stream = summarize(streamLat)
	res.AckToStream = summarize(afterAck)
	res.Receipts = int(receipts.Load())
	if res.Seconds > 0 {
		res.ReceiptsPerS = float64(res.Receipts) / res.Seconds
	}
	res.Server = srv.finish(ctx, res.Acked, sendEnd)
	return res, nil
}

// prefill sends count(i) messages into thread i (8 at a time per thread)
// and, with markRead, has each patient mark the thread read. It returns each
// thread's message names in thread order.
func prefill(ctx context.Context, threads []*thread, count func(i int) int, markRead bool) ([][]string, error) {
	names := make([][]string, len(threads))
	for ti, th := range threads {
		n := count(ti)
		var next atomic.Int64
		errs := make([]error, 8)
		got := make([]string, n)
		var wg sync.WaitGroup
		for w := range errs {
			wg.Go(func() {
				for i := next.Add(1); i <= int64(n); i = next.Add(1) {
					name, err := (httpSender{}).send(ctx, th, "Your appointment is confirmed", fmt.Sprintf("prefill-%d-%d", ti, i))
					if err != nil {
						errs[w] = fmt.Errorf("prefill: %w", err)
						return
					}
					got[i-1] = name
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		slices.SortFunc(got, func(a, b string) int { return cmp.Compare(seqOf(a), seqOf(b)) })
		names[ti] = got
		if !markRead {
			continue
		}
		if err := th.patient.call(ctx, "POST", "/v1/"+th.conv+":markRead", map[string]any{}, nil); err != nil {
			return nil, fmt.Errorf("prefill: mark read: %w", err)
		}
	}
	return names, nil
}

// seqOf is m of "conversations/c/messages/m" (-1 when it is not a number).
func seqOf(message string) int64 {
	n, err := strconv.ParseInt(message[strings.LastIndexByte(message, '/')+1:], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// setUp creates the run's patients (opted in, with portal accounts), a staff
// user and a thread per sender, and opens each patient's event stream (in
// read mode each staff user's).
func setUp(ctx context.Context, base *client, cfg Config) ([]*thread, error) {
	system, err := base.as(ctx, "bench-pms", "system", cfg.Practice)
	if err != nil {
		return nil, fmt.Errorf("dev token (is the deployment in dev mode?): %w", err)
	}
	threads := make([]*thread, cfg.Senders)
	for i := range threads {
		id := fmt.Sprintf("bench-patient-%d", i)
		if err := system.call(ctx, "POST", "/v1/patients", map[string]any{"patient": map[string]any{
			"name": "patients/" + id, "externalId": id, "displayName": fmt.Sprintf("Bench Patient %d", i),
			"dateOfBirth": "1980-01-01", "hasPortalAccount": true,
		}}, nil); err != nil {
			return nil, fmt.Errorf("create patient: %w", err)
		}
		patient, err := base.as(ctx, id, "patient", cfg.Practice)
		if err != nil {
			return nil, err
		}
		if err := patient.call(ctx, "PATCH", "/v1/patients/"+id+"/communicationPreferences",
			map[string]any{"chatOptIn": true}, nil); err != nil {
			return nil, fmt.Errorf("opt in: %w", err)
		}
		staff, err := base.as(ctx, fmt.Sprintf("bench-staff-%d", i), "dentist", cfg.Practice)
		if err != nil {
			return nil, err
		}
		var conv struct {
			Name string `json:"name"`
		}
		if err := staff.call(ctx, "POST", "/v1/conversations", map[string]any{"patient": "patients/" + id}, &conv); err != nil {
			return nil, fmt.Errorf("create conversation: %w", err)
		}
		urls := append([]string{base.url}, cfg.FailoverURLs...)
		for j := range urls {
			urls[j] = strings.TrimRight(urls[j], "/")
		}
		own := i % len(urls)
		urls = append(urls[own:], urls[:own]...) // the thread's own gateway first
		var staffs []*client
		for _, u := range urls {
			staffs = append(staffs, staff.at(u))
		}
		watcher := patient // send mode: the recipient's stream
		if cfg.Mode == ModeRead {
			watcher = staff // read mode: the sender's stream, where receipts arrive
		}
		s, err := watcher.at(urls[0]).openStream(ctx, urls, cfg.StreamIdle)
		if err != nil {
			for _, th := range threads[:i] {
				th.stream.close()
			}
			return nil, fmt.Errorf("open event stream: %w", err)
		}
		threads[i] = &thread{conv: conv.Name, staff: staffs[0], staffs: staffs, patient: patient.at(urls[0]), stream: s}
	}
	return threads, nil
}

// markReads marks th read as its stream receives messages, every n of them,
// until ctx ends; a final mark covers the rest.
func markReads(ctx context.Context, th *thread, n int, receipts *atomic.Int64, countErr func(string)) {
	marked := 0
	for {
		got, changed := th.stream.count(marked + n)
		if got-marked < n {
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
			continue
		}
		if err := th.patient.call(ctx, "POST", "/v1/"+th.conv+":markRead", map[string]any{}, nil); err != nil {
			if ctx.Err() != nil {
				return
			}
			countErr(reasonOf(err))
			// Back off instead of hammering a failing server.
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		receipts.Add(1)
		marked = got
	}
}

// parentOf is "conversations/c" of "conversations/c/messages/m".
func parentOf(message string) string {
	if i := strings.Index(message, "/messages/"); i > 0 {
		return message[:i]
	}
	return ""
}

// outOfOrder counts the messages of read (a recipient's stream, in the
// order read) that came after a message acknowledged later than them.
func outOfOrder(acked, read []string) int {
	pos := make(map[string]int, len(acked))
	for i, n := range acked {
		pos[n] = i
	}
	n, last := 0, -1
	for _, name := range read {
		i, ok := pos[name]
		if !ok {
			continue
		}
		if i < last {
			n++
			continue
		}
		last = i
	}
	return n
}

// pacer holds --rate's schedule: the i-th send (from 1) starts no earlier
// than start + (i-1) × interval, and at once when that time has passed, so
// a sender that fell behind (a slow ack, a late wake-up) catches up and the
// run keeps the asked rate whenever the server can. A time.Ticker instead
// drops the ticks nobody was waiting for or that came late: on a loaded
// 2-core machine `--rate 1000` gave 714–859 sends/s (BENCHMARKS.md).
type pacer struct {
	start    time.Time
	interval time.Duration // zero: flat out
	// sleep waits d or until ctx ends; false if ctx ended.
	sleep func(ctx context.Context, d time.Duration) bool
}

// wait waits for send i's start; false if ctx ended first.
func (p pacer) wait(ctx context.Context, i int64) bool {
	if p.interval <= 0 {
		return true
	}
	d := time.Until(p.start.Add(time.Duration(i-1) * p.interval))
	if d <= 0 {
		return ctx.Err() == nil
	}
	return p.sleep(ctx, d)
}

// sleepCtx waits d or until ctx ends; false if ctx ended.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
