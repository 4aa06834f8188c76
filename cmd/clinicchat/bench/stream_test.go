package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

// sseMessage is a message resource as the gateway writes it on /v1/events.
func sseMessage(conv string, seq int, status string) string {
	return fmt.Sprintf(`{"message":{"name":"conversations/%s/messages/%d","sender":"users/bench-staff-0","senderRole":"dentist",`+
		`"text":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","sensitive":false,"locked":false,"attachments":[],`+
		`"artifact":null,"status":%q,"createTime":"2026-12-01T08:20:02.901453Z","deliverTime":"2026-12-01T08:20:02.903139Z",`+
		`"readTime":null,"requestId":"bench-0-%d","seq":%d,"readBy":"","senderDisplayName":""}}`, conv, seq, status, seq, seq)
}

func sseConversation(conv string, seq int) string {
	return fmt.Sprintf(`{"conversation":{"name":"conversations/%s","patient":"patients/bench-patient-0","patientDisplayName":"Bench Patient 0",`+
		`"state":"ACTIVE","createTime":"2026-12-01T08:20:02.897711Z","lastMessageTime":"2026-12-01T08:20:02.903269Z",`+
		`"lastMessagePreview":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","unreadCount":%d,"pinned":false,"muted":false,`+
		`"lastMessageSeq":%d,"awaitingReplySince":null,"assignee":"","assigneeDisplayName":""}}`, conv, seq, seq)
}

// recipientStream is what a send-mode recipient's stream reads for n
// messages: per message its conversation.updated, message.created and the
// DELIVERED message.updated, a keep-alive now and then.
func recipientStream(n int) []byte {
	var b bytes.Buffer
	b.WriteString(": connected\nid: d1.c1\n\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "event: conversation.updated\nid: d%d.c%d\ndata: %s\n\n", 3*i, i, sseConversation("c0", i))
		fmt.Fprintf(&b, "event: message.created\nid: d%d.c%d\ndata: %s\n\n", 3*i+1, i, sseMessage("c0", i, "SENT"))
		fmt.Fprintf(&b, "event: message.updated\nid: d%d.c%d\ndata: %s\n\n", 3*i+2, i, sseMessage("c0", i, "DELIVERED"))
		if i%100 == 0 {
			fmt.Fprintf(&b, ": ping\nid: d%d.c%d\n\n", 3*i+2, i)
		}
	}
	return b.Bytes()
}

// senderStream is what a read-mode staff stream reads for n receipts of
// its own thread among threads threads: every thread's READ receipts and
// conversation.updated (the stream is practice-wide).
func senderStream(n, threads int) []byte {
	var b bytes.Buffer
	b.WriteString(": connected\nid: d1.c1\n\n")
	id := 1
	for i := 1; i <= n; i++ {
		for t := range threads {
			id++
			conv := fmt.Sprintf("c%d", t)
			fmt.Fprintf(&b, "event: conversation.updated\nid: d%d.c%d\ndata: %s\n\n", id, id, sseConversation(conv, i))
			fmt.Fprintf(&b, "event: message.updated\nid: d%d.c%d\ndata: %s\n\n", id, id, sseMessage(conv, i, "READ"))
		}
	}
	return b.Bytes()
}

func newTestStream() *stream { return newStream(context.Background(), nil, nil, 0) }

// BenchmarkStreamRead is the client's cost of reading a recipient's
// stream, per message (three events each), and of a read-mode sender's
// stream, per receipt of its own thread among 8 threads' receipts.
func BenchmarkStreamRead(b *testing.B) {
	const n = 1000
	for _, tc := range []struct {
		name     string
		body     []byte
		receipts bool
	}{
		{"recipient", recipientStream(n), false},
		{"sender-receipts", senderStream(n, 8), true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(tc.body)))
			for b.Loop() {
				s := newTestStream()
				if tc.receipts {
					s.countReceiptsOf("conversations/c0")
				}
				s.read(io.NopCloser(bytes.NewReader(tc.body)), func() {})
				if tc.receipts && len(s.reads) != n || !tc.receipts && len(s.first) != n {
					b.Fatalf("read %d messages and %d receipts", len(s.first), len(s.reads))
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/msg")
		})
	}
}

// TestStreamRead: the reader counts what the run reports — each
// message.created once (again as a duplicate), receipts only of the
// thread it counts and only when it counts them, resets — and keeps the
// last event id (none after a reset) for a reconnect.
func TestStreamRead(t *testing.T) {
	body := ": connected\nid: d1.c1\n\n" +
		"event: message.created\nid: d2.c1\ndata: " + sseMessage("c0", 1, "SENT") + "\n\n" +
		"event: message.created\nid: d3.c1\ndata: " + sseMessage("c0", 2, "SENT") + "\n\n" +
		"event: message.created\nid: d4.c1\ndata: " + sseMessage("c0", 1, "SENT") + "\n\n" + // a duplicate
		"event: message.updated\nid: d5.c1\ndata: " + sseMessage("c0", 1, "READ") + "\n\n" +
		"event: message.updated\nid: d6.c1\ndata: " + sseMessage("c1", 1, "READ") + "\n\n" + // another thread's
		"event: message.updated\nid: d7.c1\ndata: " + sseMessage("c0", 2, "DELIVERED") + "\n\n" +
		"event: message.updated\nid: d8.c1\ndata: " + sseMessage("c0", 1, "READ") + "\n\n" + // a duplicate receipt
		"event: conversation.updated\nid: d9.c1\ndata: " + sseConversation("c0", 2) + "\n\n" +
		": ping\nid: d10.c1\n\n"
	for _, receipts := range []bool{false, true} {
		s := newTestStream()
		if receipts {
			s.countReceiptsOf("conversations/c0")
		}
		s.read(io.NopCloser(strings.NewReader(body)), func() {})
		got := s.snapshot()
		if want := []string{"conversations/c0/messages/1", "conversations/c0/messages/2"}; !slices.Equal(got.order, want) {
			t.Errorf("order %v, want %v", got.order, want)
		}
		if len(got.first) != 2 || got.duplicates != 1 {
			t.Errorf("first %v, duplicates %d; want 2 and 1", got.first, got.duplicates)
		}
		wantReads, wantDups := 0, 0
		if receipts {
			wantReads, wantDups = 1, 1
		}
		if _, ok := got.reads["conversations/c0/messages/1"]; len(got.reads) != wantReads || receipts && !ok || got.readDups != wantDups {
			t.Errorf("receipts %v (counting: %v), duplicates %d", got.reads, receipts, got.readDups)
		}
		if s.lastID != "d10.c1" || got.resets != 0 {
			t.Errorf("last id %q, resets %d", s.lastID, got.resets)
		}
	}

	s := newTestStream()
	s.read(io.NopCloser(strings.NewReader("event: message.created\nid: d2.c1\ndata: "+sseMessage("c0", 1, "SENT")+
		"\n\nevent: reset\ndata: {\"reason\":\"behind\"}\n\n")), func() {})
	if s.resets != 1 || s.lastID != "" || len(s.first) != 1 {
		t.Errorf("after a reset: resets %d, last id %q, %d messages", s.resets, s.lastID, len(s.first))
	}
	s.lastID = "d7.c1" // from an earlier connection: kept when this one sends no id
	s.read(io.NopCloser(strings.NewReader(": connected\n\n")), func() {})
	if s.lastID != "d7.c1" {
		t.Errorf("last id %q after a connection without ids, want the earlier d7.c1", s.lastID)
	}
}

func TestMessageFields(t *testing.T) {
	for _, tc := range []struct {
		data, name, status string
		ok                 bool
	}{
		{sseMessage("c0", 7, "READ"), "conversations/c0/messages/7", "READ", true},
		{`{"message":{"text":"a \"name\":\"x\" {[","name":"n","attachments":[{"name":"f"}],"status":"SENT"}}`, "n", "SENT", true},
		{` { "other" : [1, -2.5e3, true, null, {"message":{"name":"no"}}], "message" : { "name" : "a\/b\u00e9" } } `, "a/bé", "", true},
		{`{"message":{"Name":"x","STATUS":null}}`, "x", "", true},
		{`{"message":null}`, "", "", false},
		{`{"message":{"name":"x"}`, "", "", false},
		{`{"message":{"name":"x"}} x`, "", "", false},
		{`[]`, "", "", false},
		{``, "", "", false},
	} {
		n, st, ok := messageFields([]byte(tc.data))
		name, status := string(n), string(st)
		if name != tc.name || status != tc.status || ok != tc.ok {
			t.Errorf("messageFields(%s) = %q, %q, %v; want %q, %q, %v", tc.data, name, status, ok, tc.name, tc.status, tc.ok)
		}
	}
}

// FuzzMessageFields holds messageFields to encoding/json, which the stream
// reader used before: on every input encoding/json accepts, the same name
// and status (and no panic on any input).
func FuzzMessageFields(f *testing.F) {
	f.Add([]byte(sseMessage("c0", 1, "READ")))
	f.Add([]byte(`{"message":{"name":"a\"b","status":"x","more":{"name":[1,{"x":null}]}},"message":{"status":"Y"}}`))
	f.Add([]byte(`{"MESSAGE":{"nAme":"\u212a\ud800","status":"\xff"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, st, ok := messageFields(data)
		name, status := string(n), string(st)
		var d struct {
			Message struct {
				Name   string `json:"name"`
				Status string `json:"status"`
			} `json:"message"`
		}
		if json.Unmarshal(data, &d) != nil {
			return
		}
		if !ok {
			name, status = "", "" // the reader ignores the event, as it ignores one without a name
			if d.Message.Name != "" {
				t.Fatalf("messageFields refused %s, encoding/json read name %q", data, d.Message.Name)
			}
			return
		}
		if name != d.Message.Name || status != d.Message.Status {
			t.Fatalf("messageFields(%s) = %q, %q; encoding/json: %q, %q", data, name, status, d.Message.Name, d.Message.Status)
		}
	})
}

// TestStreamWakes: a waiter is woken once the stream has what it asked for,
// not at every message before; waitFor returns once every name was read.
func TestStreamWakes(t *testing.T) {
	created := func(seq int) string {
		return "event: message.created\nid: d1.c1\ndata: " + sseMessage("c0", seq, "SENT") + "\n\n"
	}
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	s := newTestStream()
	got, ch := s.count(2)
	if got != 0 {
		t.Fatalf("count %d before any event", got)
	}
	s.read(io.NopCloser(strings.NewReader(created(1))), func() {})
	if closed(ch) {
		t.Error("woken at 1 message, asked for 2")
	}
	s.read(io.NopCloser(strings.NewReader(created(2))), func() {})
	if !closed(ch) {
		t.Fatal("not woken at 2 messages")
	}
	if got, _ := s.count(2); got != 2 {
		t.Errorf("count %d, want 2", got)
	}

	// waitFor, with the events arriving while it waits.
	pr, pw := io.Pipe()
	go func() {
		defer close(s.done)
		s.read(pr, func() {})
	}()
	waited := make(chan struct{})
	go func() {
		defer close(waited)
		s.waitFor(context.Background(), []string{"conversations/c0/messages/3", "conversations/c0/messages/4"}, false, time.Now().Add(time.Hour))
	}()
	for _, seq := range []int{3, 4} {
		if _, err := io.WriteString(pw, created(seq)); err != nil {
			t.Fatal(err)
		}
	}
	<-waited // hangs (the test times out) if a wake-up is lost
	pw.Close()
	if got, _ := s.count(0); got != 4 {
		t.Errorf("count %d, want 4", got)
	}
}

// FuzzObjectString holds objectString (the HTTP sender's read of an
// answer's name) to encoding/json: on every input encoding/json accepts
// into a string field, the same value; on what it refuses, no value.
func FuzzObjectString(f *testing.F) {
	f.Add([]byte(`{"name":"conversations/c/messages/1","sender":"users/x","attachments":[],"seq":"1"}`))
	f.Add([]byte(`{"NAME":"a\"b","x":{"name":"inner"},"nAme":null}`))
	f.Add([]byte(`{"name":1}`))
	f.Add([]byte(`{"name":"\u00e9\ud800","n\u0061me":"esc"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, ok := objectString(data, "name")
		var d struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal(data, &d); err != nil {
			if ok && json.Valid(data) {
				// encoding/json refused the value's type (a number): so must we.
				t.Fatalf("objectString(%s) = %q; encoding/json: %v", data, got, err)
			}
			return
		}
		if !ok {
			t.Fatalf("objectString refused %s, encoding/json read %q", data, d.Name)
		}
		if string(got) != d.Name {
			t.Fatalf("objectString(%s) = %q; encoding/json: %q", data, got, d.Name)
		}
	})
}

// appendJSONString writes what encoding/json reads back as the same string.
func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "bench-3-17", strings.Repeat("x", 64), `a"b\c`, "tab\there", "é ü 😀", "<&>", "\x00\xff"} {
		var back string
		if err := json.Unmarshal(appendJSONString(nil, s), &back); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		if want := strings.ToValidUTF8(s, "\uFFFD"); back != want {
			t.Fatalf("%q read back as %q", s, back)
		}
	}
}

// BenchmarkHTTPSendCodec is the HTTP sender's own work per send besides the
// transport: its request body and the answer's name, with encoding/json
// (before) and written and scanned by hand (httpSender.send).
func BenchmarkHTTPSendCodec(b *testing.B) {
	text, reqID := strings.Repeat("x", 64), "bench-3-12345"
	var answer struct {
		Message json.RawMessage `json:"message"`
	}
	if err := json.Unmarshal([]byte(sseMessage("c0", 12345, "SENT")), &answer); err != nil {
		b.Fatal(err)
	}
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(map[string]any{"text": text, "requestId": reqID}); err != nil {
				b.Fatal(err)
			}
			var m struct {
				Name string `json:"name"`
			}
			if err := json.Unmarshal(answer.Message, &m); err != nil || m.Name == "" {
				b.Fatal(err)
			}
		}
	})
	b.Run("by-hand", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			body := make([]byte, 0, len(text)+len(reqID)+32)
			body = append(body, `{"text":`...)
			body = appendJSONString(body, text)
			body = append(body, `,"requestId":`...)
			body = appendJSONString(body, reqID)
			_ = append(body, '}')
			name, ok := objectString(answer.Message, "name")
			if !ok || len(string(name)) == 0 {
				b.Fatal("no name")
			}
		}
	})
}
