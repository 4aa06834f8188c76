package bench

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"time"
)

// Sample is one acknowledged message of a send run: when its send started,
// and how long it took to its ack and to its recipient's stream.
type Sample struct {
	Name   string
	Sent   time.Time
	Ack    time.Duration
	Stream time.Duration
}

// WriteTimeline writes the run's samples as CSV in send order, one line a
// message that reached its stream: the send's start in Unix nanoseconds
// and in ms from the first send, send → ack and send → stream in ms, and
// the message's name. Where the tail comes from: slow messages that come
// in bursts (every sender at once) point at something the whole server
// waited for — a collection, a checkpoint, a stalled disk — which a
// server's own timestamped log (GODEBUG=gctrace=1, its metrics) can be
// laid against; slow ones spread evenly point at queueing.
func (r *Result) WriteTimeline(w io.Writer) error {
	s := slices.Clone(r.Timeline)
	slices.SortFunc(s, func(a, b Sample) int { return a.Sent.Compare(b.Sent) })
	bw := bufio.NewWriter(w)
	fmt.Fprintln(bw, "sent_unix_ns,sent_ms,ack_ms,stream_ms,message")
	for _, x := range s {
		fmt.Fprintf(bw, "%d,%.3f,%.3f,%.3f,%s\n", x.Sent.UnixNano(), ms(x.Sent.Sub(s[0].Sent)), ms(x.Ack), ms(x.Stream), x.Name)
	}
	return bw.Flush()
}
