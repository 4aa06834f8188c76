package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Latency is a sample's summary in milliseconds.
type Latency struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50Ms"`
	P95   float64 `json:"p95Ms"`
	P99   float64 `json:"p99Ms"`
	Max   float64 `json:"maxMs"`
}

func summarize(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	pct := func(q float64) float64 {
		i := int(q*float64(len(s))+0.5) - 1
		return ms(s[min(max(i, 0), len(s)-1)])
	}
	return Latency{Count: len(s), P50: pct(0.50), P95: pct(0.95), P99: pct(0.99), Max: ms(s[len(s)-1])}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// WriteText prints the result for a person.
func (r *Result) WriteText(w io.Writer) {
	if r.Mode == ModeRead {
		r.writeReadText(w)
		return
	}
	fmt.Fprintf(w, "clinicchat bench: %d senders over %s, practice %s\n", r.Senders, r.Transport, r.Practice)
	r.writeIdle(w)
	fmt.Fprintf(w, "  sends         %d acknowledged of %d in %.2fs: %.0f sends/s\n", r.Acked, r.Attempted, r.Seconds, r.SendsPerS)
	fmt.Fprintf(w, "  send → ack    p50 %.2f  p95 %.2f  p99 %.2f  max %.2f ms\n", r.Ack.P50, r.Ack.P95, r.Ack.P99, r.Ack.Max)
	fmt.Fprintf(w, "  send → stream p50 %.2f  p95 %.2f  p99 %.2f  max %.2f ms (%d seen)\n",
		r.Stream.P50, r.Stream.P95, r.Stream.P99, r.Stream.Max, r.Stream.Count)
	fmt.Fprintf(w, "  ack → stream  p50 %.2f  p95 %.2f  p99 %.2f  max %.2f ms (each message's stream time after its ack)\n",
		r.AckToStream.P50, r.AckToStream.P95, r.AckToStream.P99, r.AckToStream.Max)
	fmt.Fprintf(w, "  receipts      %d markRead, %.0f/s\n", r.Receipts, r.ReceiptsPerS)
	fmt.Fprintf(w, "  lost %d, duplicated %d, stream resets %d\n", r.Lost, r.Duplicated, r.Resets)
	r.writeErrors(w)
	r.writeServer(w, "message", "the recipients")
}

// writeReadText prints a read-mode result.
func (r *Result) writeReadText(w io.Writer) {
	fmt.Fprintf(w, "clinicchat bench: read receipts, %d threads over %s, practice %s\n", r.Senders, r.Transport, r.Practice)
	r.writeIdle(w)
	fmt.Fprintf(w, "  markRead         %d acknowledged of %d in %.2fs: %.0f/s\n", r.Acked, r.Attempted, r.Seconds, r.SendsPerS)
	fmt.Fprintf(w, "  receipts         %d on the senders' streams, %.0f/s\n", r.Receipts, r.ReceiptsPerS)
	fmt.Fprintf(w, "  markRead → ack    p50 %.2f  p95 %.2f  p99 %.2f  max %.2f ms\n", r.Ack.P50, r.Ack.P95, r.Ack.P99, r.Ack.Max)
	fmt.Fprintf(w, "  markRead → sender p50 %.2f  p95 %.2f  p99 %.2f  max %.2f ms\n", r.Stream.P50, r.Stream.P95, r.Stream.P99, r.Stream.Max)
	fmt.Fprintf(w, "  lost %d, duplicated %d, out of order %d, stream resets %d\n", r.Lost, r.Duplicated, r.OutOfOrder, r.Resets)
	r.writeErrors(w)
	r.writeServer(w, "receipt", "the senders")
}

// writeServer prints the server's figures per unit (message or receipt),
// the first counted until who had them.
func (r *Result) writeServer(w io.Writer, unit, who string) {
	if r.Server == nil {
		return
	}
	fmt.Fprintf(w, "  server        %.3f ms CPU per %s (until %s had them), peak RSS %.0f MiB\n",
		r.Server.CPUMsPerMessage, unit, who, r.Server.PeakRSSMiB)
	if r.Server.CPUMsPerMessageUntilIdle > 0 {
		fmt.Fprintf(w, "  until idle    %.3f ms CPU per %s; busy %.2fs after the last ack\n",
			r.Server.CPUMsPerMessageUntilIdle, unit, r.Server.BusyAfterLastAckS)
	}
	if r.Server.CaughtUpAfterLastAckS > 0 {
		fmt.Fprintf(w, "  caught up     %.2fs after the last ack (every consumer and outbox empty)\n", r.Server.CaughtUpAfterLastAckS)
	}
	if r.Server.CommitsPerMessage > 0 {
		fmt.Fprintf(w, "  commits       %.2f database commits per %s, until idle\n", r.Server.CommitsPerMessage, unit)
	}
}

// writeErrors prints the errors by reason.
func (r *Result) writeErrors(w io.Writer) {
	if len(r.Errors) == 0 {
		fmt.Fprintln(w, "  errors        none")
	} else {
		keys := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		parts := make([]string, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %d", k, r.Errors[k]))
		}
		fmt.Fprintf(w, "  errors        %s\n", strings.Join(parts, ", "))
	}
}

// WriteJSON prints the result for a machine.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// progressBar draws "[#####.....] sent/total" on w, at most every 100 ms.
type progressBar struct {
	w    io.Writer
	last time.Time
}

func (p *progressBar) update(sent, total int) {
	now := time.Now()
	if sent < total && now.Sub(p.last) < 100*time.Millisecond {
		return
	}
	p.last = now
	const width = 30
	n := width * sent / max(total, 1)
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d", strings.Repeat("#", n), strings.Repeat(".", width-n), sent, total)
	if sent >= total {
		fmt.Fprintln(p.w)
	}
}

// writeIdle prints the conditions of the run: the machine's calibration and
// how many idle streams of another practice were open.
func (r *Result) writeIdle(w io.Writer) {
	if m := r.Machine; m != nil {
		across := ""
		if m.WakeupTwoCPUsMicros > 0 {
			across = fmt.Sprintf(", %.1f µs across two", m.WakeupTwoCPUsMicros)
		}
		fmt.Fprintf(w, "  machine       a system call %.2f µs, a thread wake-up round trip %.1f µs on one CPU%s (before the run)\n",
			m.SyscallMicros, m.WakeupOneCPUMicros, across)
	}
	if r.IdleStreams > 0 {
		fmt.Fprintf(w, "  idle streams  %d of another practice's staff, open through the run\n", r.IdleStreams)
	}
}
