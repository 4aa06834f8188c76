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

// spoolThread spools n messages the way the export gets them from the
// service: newest first. Message i (0 oldest) says "Message number i".
func spoolThread(t testing.TB, n int) *messageSpool {
	t.Helper()
	spool, err := newMessageSpool()
	require.NoError(t, err)
	t0 := time.Date(2026, 1, 2, 9, 0, 0, 0, time.UTC)
	for i := n - 1; i >= 0; i-- {
		m := &deliveryv1.Message{
			Name: fmt.Sprintf("conversations/c1/messages/%d", i+1), Sender: "patients/alice", SenderRole: "patient",
			Text:   fmt.Sprintf("Message number %d: could you look at my crown again, it still hurts when I bite down on the left side.", i),
			Status: deliveryv1.Message_READ, CreateTime: timestamppb.New(t0.Add(time.Duration(i) * time.Minute)),
		}
		if i%2 == 1 {
			m.Sender, m.SenderRole, m.SenderDisplayName = "users/dr-lee", "dentist", "Dr Grace Lee"
		}
		require.NoError(t, spool.Add(m))
	}
	return spool
}

func writeTestThread(w io.Writer, spool *messageSpool, n int) error {
	return writeTestThreadPaged(w, spool, n, nil)
}

func writeTestThreadPaged(w io.Writer, spool *messageSpool, n int, onPage func()) error {
	conv := &conversationv1.Conversation{Name: "conversations/c1", Patient: "patients/alice"}
	patient := &preferencesv1.Patient{DisplayName: "Alice Johnson", DateOfBirth: "1990-04-01"}
	t0 := time.Date(2026, 1, 2, 9, 0, 0, 0, time.UTC)
	sum := threadSummary{count: n, oldest: t0, newest: t0.Add(time.Duration(n-1) * time.Minute)}
	return writeThreadPDF(w, "demo", conv, patient, sum, spool.Reverse, map[string]string{}, onPage)
}

// A long thread comes out whole, oldest first, as a PDF that poppler reads
// without complaint: the streamed writer's offsets, page tree and wrapping.
func TestThreadPDFLongThread(t *testing.T) {
	const n = 3000
	spool := spoolThread(t, n)
	defer spool.Close()
	var out bytes.Buffer
	require.NoError(t, writeTestThread(&out, spool, n))
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

// Long words and lines wrap inside the page; text outside Windows-1252 and
// PDF string delimiters do not break the document.
func TestThreadPDFWrapsAndEscapes(t *testing.T) {
	spool, err := newMessageSpool()
	require.NoError(t, err)
	defer spool.Close()
	long := strings.Repeat("x", 400)
	require.NoError(t, spool.Add(&deliveryv1.Message{Sender: "patients/alice", SenderRole: "patient", Status: deliveryv1.Message_SENT,
		Text: "Brackets (like these) and a back\\slash, café, 牙医\n" + long, CreateTime: timestamppb.Now()}))
	var out bytes.Buffer
	require.NoError(t, writeTestThread(&out, spool, 1))
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

// BenchmarkThreadPDF prints, against the thread's length, the heap the
// export keeps live (measured after a GC every 16 pages: what it holds, not
// its garbage) and its peak heap including garbage not yet collected. Both
// are flat, since one page and one message are in memory at a time. Run:
//
//	go test ./gateway -run '^$' -bench ThreadPDF -benchmem
func BenchmarkThreadPDF(b *testing.B) {
	for _, n := range []int{1000, 4000, 16000} {
		b.Run(fmt.Sprintf("messages=%d", n), func(b *testing.B) {
			spool := spoolThread(b, n)
			defer spool.Close()
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
				if err := writeTestThreadPaged(cw, spool, n, onPage); err != nil {
					b.Fatal(err)
				}
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
