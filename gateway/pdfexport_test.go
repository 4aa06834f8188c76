package gateway

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	rtmetrics "runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	conversationv1 "github.com/clinicchat/clinicchat/proto/clinicchat/conversation/v1"
	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	preferencesv1 "github.com/clinicchat/clinicchat/proto/clinicchat/preferences/v1"
)

// pdfToText extracts a PDF's text with poppler's pdftotext; without it the
// test skips (fails under CI=true, where .ci/run installs poppler-utils).
func pdfToText(t *testing.T, pdf []byte) string {
	t.Helper()
	bin, err := exec.LookPath("pdftotext")
	if err != nil {
		msg := fmt.Sprintf("this test needs pdftotext (apt-get install -y poppler-utils): %v", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	cmd := exec.Command(bin, "-layout", "-", "-")
	cmd.Stdin = bytes.NewReader(pdf)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "pdftotext reads the PDF: %s", stderr.String())
	require.Empty(t, strings.TrimSpace(stderr.String()), "pdftotext finds nothing wrong")
	return string(out)
}

// testMessage is message i (0 the oldest) of a test thread.
func testMessage(i int) *deliveryv1.Message {
	t0 := time.Date(2026, 1, 2, 9, 0, 0, 0, time.UTC)
	m := &deliveryv1.Message{
		Name: fmt.Sprintf("conversations/c1/messages/%d", i+1), Seq: int32(i + 1), Sender: "patients/alice", SenderRole: "patient",
		Text:   fmt.Sprintf("Message number %d: could you look at my crown again, it still hurts when I bite down on the left side.", i),
		Status: deliveryv1.Message_READ, CreateTime: timestamppb.New(t0.Add(time.Duration(i) * time.Minute)),
	}
	if i%2 == 1 {
		m.Sender, m.SenderRole, m.SenderDisplayName = "users/dr-lee", "dentist", "Dr Grace Lee"
	}
	return m
}

// fakeThread is a thread of messages listed as the delivery service lists
// them: newest first, pageSize at a time, the page token the seq to read
// below. Messages may be appended while it is read.
type fakeThread struct {
	msgs  []*deliveryv1.Message
	calls int
}

func newFakeThread(n int) *fakeThread {
	f := &fakeThread{}
	for i := range n {
		f.msgs = append(f.msgs, testMessage(i))
	}
	return f
}

func (f *fakeThread) list(token string) (*deliveryv1.ListMessagesResponse, error) {
	f.calls++
	before := len(f.msgs) + 1
	if token != "" {
		if _, err := fmt.Sscan(token, &before); err != nil {
			return nil, err
		}
	}
	out := &deliveryv1.ListMessagesResponse{}
	for seq := before - 1; seq >= 1 && len(out.Messages) < exportPageSize; seq-- {
		out.Messages = append(out.Messages, f.msgs[seq-1])
	}
	if last := len(out.Messages); last == exportPageSize && out.Messages[last-1].GetSeq() > 1 {
		out.NextPageToken = fmt.Sprint(out.Messages[last-1].GetSeq())
	}
	return out, nil
}

// exportThread writes the PDF of a thread read through exportPass.
func exportThread(t testing.TB, w io.Writer, thread *fakeThread, onPage func()) {
	t.Helper()
	pass := exportPass{list: thread.list}
	require.NoError(t, pass.count())
	defer pass.close()
	conv := &conversationv1.Conversation{Name: "conversations/c1", Patient: "patients/alice"}
	patient := &preferencesv1.Patient{DisplayName: "Alice Johnson", DateOfBirth: "1990-04-01"}
	require.NoError(t, writeThreadPDF(w, "demo", conv, patient, pass.summary, pass.oldestFirst, map[string]string{}, onPage))
}

// A long thread comes out whole, oldest first, as a PDF that poppler reads
// without complaint: the streamed writer's offsets, page tree and wrapping.
func TestThreadPDFLongThread(t *testing.T) {
	const n = 3000
	thread := newFakeThread(n)
	var out bytes.Buffer
	exportThread(t, &out, thread, nil)
	require.Equal(t, 2*((n+exportPageSize-1)/exportPageSize)-1, thread.calls, "every page twice, but the newest")
	require.True(t, bytes.HasPrefix(out.Bytes(), []byte("%PDF-1.4")))
	text := strings.Join(strings.Fields(pdfToText(t, out.Bytes())), " ")
	require.Contains(t, text, "Messages: 3000, 2026-01-02T09:00:00Z to 2026-01-04T10:59:00Z (UTC)")
	first := strings.Index(text, "Message number 0:")
	last := strings.Index(text, fmt.Sprintf("Message number %d:", n-1))
	require.GreaterOrEqual(t, first, 0, "the first message")
	require.Greater(t, last, first, "the last message, after the first")
	for _, i := range []int{1, 999, 1500, 2998} {
		require.Contains(t, text, fmt.Sprintf("Message number %d: could you look at my crown again", i))
	}
	require.Equal(t, n, strings.Count(text, "Message number "), "every message once")
	require.Contains(t, text, "Dr Grace Lee (dentist), 2026-01-02 09:01:00, READ")
	pages := strings.Count(text, "Page ")
	require.Greater(t, pages, 100)
	require.Contains(t, text, fmt.Sprintf("Page %d", pages), "numbered to the end")
}

// A message sent while the export runs is not in it: the heading's count
// and the messages agree, and none is missing or twice.
func TestExportPassIsTheThreadAsCounted(t *testing.T) {
	const n = 450
	thread := newFakeThread(n)
	pass := exportPass{list: thread.list}
	require.NoError(t, pass.count())
	defer pass.close()
	require.Equal(t, n, pass.summary.count)
	thread.msgs = append(thread.msgs, testMessage(n)) // sent meanwhile
	var seqs []int32
	require.NoError(t, pass.oldestFirst(func(m *deliveryv1.Message) error {
		seqs = append(seqs, m.GetSeq())
		return nil
	}))
	require.Len(t, seqs, n)
	for i, seq := range seqs {
		require.Equal(t, int32(i+1), seq, "oldest first, each once")
	}
}

// Long words and lines wrap inside the page; text outside Windows-1252 and
// PDF string delimiters do not break the document.
func TestThreadPDFWrapsAndEscapes(t *testing.T) {
	long := strings.Repeat("x", 400)
	thread := &fakeThread{msgs: []*deliveryv1.Message{{Seq: 1, Sender: "patients/alice", SenderRole: "patient", Status: deliveryv1.Message_SENT,
		Text: "Brackets (like these) and a back\\slash, café, 牙医\n" + long, CreateTime: timestamppb.Now()}}}
	var out bytes.Buffer
	exportThread(t, &out, thread, nil)
	text := pdfToText(t, out.Bytes())
	require.Contains(t, text, "Brackets (like these) and a back\\slash, café")
	xs, lines := 0, 0
	for _, f := range strings.Fields(text) {
		if strings.Trim(f, "x") == "" {
			xs, lines = xs+len(f), lines+1
		}
	}
	require.Equal(t, 400, xs, "the long word whole")
	require.Greater(t, lines, 1, "split across lines")
}

// BenchmarkThreadPDF prints, against the thread's length (the messages
// themselves live in a fake service, outside the figures), the heap the
// export keeps live (measured after a GC every 16 pages: what it holds, not
// its garbage) and its peak heap including garbage not yet collected. Both
// are flat, since one page and one message are in memory at a time. Run:
//
//	go test ./gateway -run '^$' -bench ThreadPDF -benchmem
func BenchmarkThreadPDF(b *testing.B) {
	for _, n := range []int{1000, 4000, 16000} {
		b.Run(fmt.Sprintf("messages=%d", n), func(b *testing.B) {
			thread := newFakeThread(n)
			var peak, live uint64
			var written int64
			for b.Loop() {
				runtime.GC()
				base := heapLive()
				stop := sampleHeap(&peak, base)
				cw := &countWriter{}
				pages := 0
				onPage := func() {
					if pages++; pages%16 == 0 {
						runtime.GC()
						if h := heapLive(); h > base && h-base > live {
							live = h - base
						}
					}
				}
				exportThread(b, cw, thread, onPage)
				stop()
				written = cw.n
			}
			b.ReportMetric(float64(live)/1024, "live-heap-KiB")
			b.ReportMetric(float64(peak)/1024, "peak-heap-KiB")
			b.ReportMetric(float64(written)/1024, "pdf-KiB")
		})
	}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func heapLive() uint64 {
	s := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	rtmetrics.Read(s)
	return s[0].Value.Uint64()
}

// sampleHeap records the highest live heap above base until stopped.
func sampleHeap(peak *uint64, base uint64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(200 * time.Microsecond)
		defer tick.Stop()
		for {
			if h := heapLive(); h > base && h-base > *peak {
				*peak = h - base
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}
