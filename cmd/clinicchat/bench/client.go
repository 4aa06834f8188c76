package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"slices"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
)

// client calls the HTTP API as one signed-in user.
type client struct {
	hc    *http.Client
	url   string
	token string
	// md is the token as gRPC metadata, built once: never modified (a
	// call's context only carries it).
	md metadata.MD
}

func newClient(hc *http.Client, url, token string) *client {
	c := &client{hc: hc, url: url, token: token}
	if token != "" {
		c.md = metadata.Pairs("authorization", "Bearer "+token)
	}
	return c
}

// at is the same user on another gateway of the deployment.
func (c *client) at(url string) *client { return &client{hc: c.hc, url: url, token: c.token, md: c.md} }

// apiError is a refused HTTP call, with the SPEC reason when the body has one.
type apiError struct {
	status int
	reason string
}

func (e *apiError) Error() string {
	if e.reason != "" {
		return fmt.Sprintf("HTTP %d %s", e.status, e.reason)
	}
	return fmt.Sprintf("HTTP %d", e.status)
}

// reasonOf names an error for the report's "errors by reason".
func reasonOf(err error) string {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		if ae.reason != "" {
			return ae.reason
		}
		return fmt.Sprintf("HTTP_%d", ae.status)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return "CANCELLED"
	}
	if st, ok := status.FromError(err); ok {
		for _, d := range st.Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() != "" {
				return info.GetReason()
			}
		}
		return st.Code().String()
	}
	return "TRANSPORT"
}

// as returns a client signed in with a dev token for subject.
func (c *client) as(ctx context.Context, subject, role, practice string) (*client, error) {
	var out struct {
		Token string `json:"token"`
	}
	if err := c.call(ctx, "POST", "/v1/dev/tokens", map[string]any{"subject": subject, "role": role, "practice": practice}, &out); err != nil {
		return nil, err
	}
	if out.Token == "" {
		return nil, errors.New("the dev token issuer answered no token")
	}
	return newClient(c.hc, c.url, out.Token), nil
}

// call sends a JSON request and decodes a 200 answer into out (if not nil).
func (c *client) call(ctx context.Context, method, path string, body, out any) error {
	var raw []byte
	if body != nil {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			return err
		}
	}
	answer, err := c.do(ctx, method, path, raw)
	if err != nil || out == nil {
		return err
	}
	return json.Unmarshal(answer, out)
}

// do sends a request with a JSON body (none when nil) and returns a 200
// answer's body; any other status is an *apiError.
func (c *client) do(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, apiErrorOf(resp.StatusCode, raw)
	}
	return raw, nil
}

// messageSender sends one message into a thread and returns its name.
type messageSender interface {
	send(ctx context.Context, th *thread, text, requestID string) (string, error)
}

// httpSender sends through the gateway: POST /v1/{conversation}/messages.
type httpSender struct{}

// It writes the body and reads the answer's name itself: encoding/json's
// reflection on both was a tenth of the client's CPU in HTTP runs (the
// answer is the whole message), on the cores of the server under test.
func (httpSender) send(ctx context.Context, th *thread, text, requestID string) (string, error) {
	body := make([]byte, 0, len(text)+len(requestID)+32)
	body = append(body, `{"text":`...)
	body = appendJSONString(body, text)
	body = append(body, `,"requestId":`...)
	body = appendJSONString(body, requestID)
	body = append(body, '}')
	answer, err := th.staff.do(ctx, "POST", "/v1/"+th.conv+"/messages", body)
	if err != nil {
		return "", err
	}
	if name, ok := objectString(answer, "name"); ok {
		return string(name), nil
	}
	var m struct {
		Name string `json:"name"`
	}
	err = json.Unmarshal(answer, &m)
	return m.Name, err
}

// readMarker marks a thread read up to one message, as its patient.
type readMarker interface {
	markRead(ctx context.Context, th *thread, upTo string) error
}

// httpMarker marks read through the gateway: POST /v1/{conversation}:markRead.
type httpMarker struct{}

func (httpMarker) markRead(ctx context.Context, th *thread, upTo string) error {
	return th.patient.call(ctx, "POST", "/v1/"+th.conv+":markRead", map[string]any{"upTo": upTo}, nil)
}

// grpcSender sends over gRPC (DeliveryService.CreateMessage), as a practice
// system would, with the staff member's bearer token in the metadata; it
// marks read (ConversationService.MarkConversationRead) with the patient's.
type grpcSender struct {
	conn *grpc.ClientConn
	dc   deliveryv1.DeliveryServiceClient
	cc   conversationv1.ConversationServiceClient
}

func newGRPCSender(addr string) (*grpcSender, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &grpcSender{conn: conn, dc: deliveryv1.NewDeliveryServiceClient(conn), cc: conversationv1.NewConversationServiceClient(conn)}, nil
}

func (g *grpcSender) close() { _ = g.conn.Close() }

func (g *grpcSender) send(ctx context.Context, th *thread, text, requestID string) (string, error) {
	ctx = metadata.NewOutgoingContext(ctx, th.staff.md)
	m, err := g.dc.CreateMessage(ctx, &deliveryv1.CreateMessageRequest{Parent: th.conv, Text: text, RequestId: requestID})
	return m.GetName(), err
}

func (g *grpcSender) markRead(ctx context.Context, th *thread, upTo string) error {
	ctx = metadata.NewOutgoingContext(ctx, th.patient.md)
	_, err := g.cc.MarkConversationRead(ctx, &conversationv1.MarkConversationReadRequest{Name: th.conv, UpTo: upTo})
	return err
}

// stream is a live /v1/events connection whose reader stamps each
// message.created as it reads it. With more than one gateway URL it
// fails over: when the connection ends (or reads nothing, not even a
// keep-alive, for idle) it reconnects to the next gateway with
// Last-Event-ID, as a browser's EventSource would.
type stream struct {
	c      *client
	urls   []string
	idle   time.Duration
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu sync.Mutex
	// changed is closed (and replaced) once the stream has read wakeAt
	// distinct messages and receipts in all: only when a waiter (count,
	// waitFor) asked for it, not at every message (a wake-up per message
	// costs the cores the server under test runs on).
	changed    chan struct{}
	wakeAt     int
	first      map[string]time.Time
	order      []string // message names in the order first read
	duplicates int
	// reads stamps each message first read with status READ on a
	// message.updated (a read receipt); readDups counts READ seen again.
	reads     map[string]time.Time
	readOrder []string // message names in the order their READ was first seen
	readDups  int
	// receiptsOf, when set, is the one thread whose receipts the stream
	// counts: others' are skipped without decoding them (a staff stream
	// carries every thread's receipts of the practice). Until it is set
	// the stream counts no receipts (send mode counts none).
	receiptsOf []byte
	resets     int
	reconnects int
	lastID     string
	err        error
}

// seen is a copy of what a stream has read.
type seen struct {
	first      map[string]time.Time
	order      []string
	duplicates int
	reads      map[string]time.Time
	readOrder  []string
	readDups   int
	resets     int
	reconnects int
}

// openStream opens /v1/events on urls[0] (the client's own URL when
// urls is empty); it returns once the subscription is live (SPEC: the
// response headers are sent once the subscription is live).
func (c *client) openStream(ctx context.Context, urls []string, idle time.Duration) (*stream, error) {
	if len(urls) == 0 {
		urls = []string{c.url}
	}
	s := newStream(ctx, c, urls, idle)
	body, stop, err := s.connect(ctx, urls[0])
	if err != nil {
		s.cancel()
		return nil, err
	}
	go s.run(body, stop)
	return s, nil
}

// newStream is a stream of c's events on urls, not connected yet; it lives
// until closed, whatever becomes of ctx.
func newStream(ctx context.Context, c *client, urls []string, idle time.Duration) *stream {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &stream{c: c, urls: urls, idle: idle, ctx: sctx, cancel: cancel, done: make(chan struct{}),
		changed: make(chan struct{}), wakeAt: math.MaxInt, first: map[string]time.Time{}, reads: map[string]time.Time{}}
}

// connect opens one connection to url, resuming after the last event id.
func (s *stream) connect(ctx context.Context, url string) (io.ReadCloser, context.CancelFunc, error) {
	cctx, stop := context.WithCancel(s.ctx)
	go func() {
		select {
		case <-ctx.Done():
			stop()
		case <-cctx.Done():
		}
	}()
	req, err := http.NewRequestWithContext(cctx, "GET", url+"/v1/events", nil)
	if err != nil {
		stop()
		return nil, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.c.token)
	req.Header.Set("Accept", "text/event-stream")
	s.mu.Lock()
	if s.lastID != "" {
		req.Header.Set("Last-Event-ID", s.lastID)
	}
	s.mu.Unlock()
	// Only the response headers are bounded; the body streams.
	t := time.AfterFunc(10*time.Second, stop)
	resp, err := s.c.hc.Do(req)
	t.Stop()
	if err != nil {
		stop()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		stop()
		return nil, nil, &apiError{status: resp.StatusCode}
	}
	return resp.Body, stop, nil
}

// run reads connection after connection until the stream is closed.
func (s *stream) run(body io.ReadCloser, stop context.CancelFunc) {
	defer close(s.done)
	for i := 0; ; {
		s.read(body, stop)
		stop()
		if s.ctx.Err() != nil || len(s.urls) < 2 {
			return
		}
		// Fail over: the next gateway, then round again, with a short
		// pause between rounds.
		for {
			i = (i + 1) % len(s.urls)
			var err error
			body, stop, err = s.connect(s.ctx, s.urls[i])
			if err == nil {
				s.mu.Lock()
				s.reconnects++
				s.mu.Unlock()
				break
			}
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// read reads one connection's events until it ends. It runs for every event
// of every recipient on the cores the server under test uses, so it reads
// only what the run counts: the name of each message.created, and the name
// and status of each message.updated when the stream counts receipts
// (countReceiptsOf; send mode never looks at them).
func (s *stream) read(body io.ReadCloser, stop context.CancelFunc) {
	defer body.Close()
	var idle *time.Timer
	if s.idle > 0 {
		idle = time.AfterFunc(s.idle, stop)
		defer idle.Stop()
	}
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	// Only this goroutine uses lastID (connect runs on it between reads):
	// it is kept here and handed back when the connection ends.
	s.mu.Lock()
	lastID := []byte(s.lastID)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.lastID = string(lastID)
		s.mu.Unlock()
	}()
	var typ, id, data []byte
	for sc.Scan() {
		if idle != nil {
			idle.Reset(s.idle)
		}
		line := sc.Bytes()
		switch {
		case len(line) == 0:
			switch string(typ) {
			case "message.created":
				at := time.Now()
				if name, _, ok := messageFields(data); ok && len(name) > 0 {
					s.mu.Lock()
					if _, dup := s.first[string(name)]; dup {
						s.duplicates++
					} else {
						name := string(name)
						s.first[name] = at
						s.order = append(s.order, name)
						s.progressed()
					}
					s.mu.Unlock()
				}
			case "message.updated":
				s.mu.Lock()
				only := s.receiptsOf
				s.mu.Unlock()
				if only == nil { // send mode: no receipts counted
					break
				}
				at := time.Now()
				if !bytes.Contains(data, only) {
					break
				}
				if name, status, ok := messageFields(data); ok && string(status) == "READ" {
					s.mu.Lock()
					if _, dup := s.reads[string(name)]; dup {
						s.readDups++
					} else {
						name := string(name)
						s.reads[name] = at
						s.readOrder = append(s.readOrder, name)
						s.progressed()
					}
					s.mu.Unlock()
				}
			case "reset":
				s.mu.Lock()
				s.resets++
				s.mu.Unlock()
				lastID = lastID[:0] // SPEC: reconnect without Last-Event-ID
				id = id[:0]
			}
			if len(id) > 0 {
				lastID = append(lastID[:0], id...)
			}
			typ, id, data = typ[:0], id[:0], data[:0]
		case bytes.HasPrefix(line, []byte("event:")):
			typ = append(typ[:0], bytes.TrimSpace(line[len("event:"):])...)
		case bytes.HasPrefix(line, []byte("id:")):
			id = append(id[:0], bytes.TrimSpace(line[len("id:"):])...)
		case bytes.HasPrefix(line, []byte("data:")):
			data = append(data, bytes.TrimPrefix(line[len("data:"):], []byte(" "))...)
		}
	}
	s.mu.Lock()
	s.err = sc.Err()
	s.mu.Unlock()
}

// countReceiptsOf makes the stream count only conversation's receipts.
func (s *stream) countReceiptsOf(conversation string) {
	s.mu.Lock()
	s.receiptsOf = []byte(`"` + conversation + `/messages/`)
	s.mu.Unlock()
}

// progressed wakes the waiters once the stream has read what they wait
// for; s.mu is held.
func (s *stream) progressed() {
	if len(s.first)+len(s.reads) >= s.wakeAt {
		close(s.changed)
		s.changed = make(chan struct{})
		s.wakeAt = math.MaxInt
	}
}

// wakeWhen has changed closed once the stream has read n more distinct
// messages or receipts than now (or earlier, for another waiter); s.mu is held.
func (s *stream) wakeWhen(n int) {
	s.wakeAt = min(s.wakeAt, len(s.first)+len(s.reads)+n)
}

// count is how many distinct messages the stream has read, and a channel
// closed by the time it has read atLeast (or read something else: a waiter
// checks again).
func (s *stream) count(atLeast int) (int, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.first) < atLeast {
		s.wakeWhen(atLeast - len(s.first))
	}
	return len(s.first), s.changed
}

// waitFor returns when every name has been read (as message.created, or
// with receipts as a READ receipt), the stream ended, or the deadline passed.
func (s *stream) waitFor(ctx context.Context, names []string, receipts bool, deadline time.Time) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	for {
		s.mu.Lock()
		seen := s.first
		if receipts {
			seen = s.reads
		}
		missing := 0
		for _, n := range names {
			if _, ok := seen[n]; !ok {
				missing++
			}
		}
		s.wakeWhen(1)
		changed := s.changed
		s.mu.Unlock()
		if missing == 0 {
			return
		}
		select {
		case <-changed:
		case <-s.done:
			return
		case <-t.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

func (s *stream) snapshot() seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := seen{first: make(map[string]time.Time, len(s.first)), order: slices.Clone(s.order),
		duplicates: s.duplicates, resets: s.resets, reconnects: s.reconnects,
		reads: maps.Clone(s.reads), readOrder: slices.Clone(s.readOrder), readDups: s.readDups}
	for k, v := range s.first {
		out.first[k] = v
	}
	return out
}

func (s *stream) close() {
	s.cancel()
	<-s.done
}
