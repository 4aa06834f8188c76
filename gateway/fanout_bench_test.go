package gateway

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/clinicchat/clinicchat/proto/clinicchat/delivery/v1"
	"github.com/clinicchat/clinicchat/services/platform/auth"
	"github.com/clinicchat/clinicchat/services/platform/natsx"
)

// fanoutLag is how many rounds (an event of each thread) BenchmarkFanout
// publishes ahead of what each thread's own stream has read.
const fanoutLag = 2

// fanoutThreads is the bench's shape (clinicchat bench --senders 8): eight
// threads, each with a staff sender and a patient.
const fanoutThreads = 8

// eventCounter counts the events (data lines) its streams read, without
// keeping them, in all and per stream those of the stream's own thread;
// progress has a signal after each.
type eventCounter struct {
	n        atomic.Int64
	own      [fanoutThreads]atomic.Int64
	progress chan struct{}
}

// await returns once cond holds (false: ctx ended first).
func (ec *eventCounter) await(ctx context.Context, cond func() bool) bool {
	for !cond() {
		select {
		case <-ec.progress:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// read reads an event stream on a plain socket until it ends; own (a
// thread's name) marks the events counted in ec.own[t].
func (ec *eventCounter) read(c net.Conn, t int, own string) {
	r := bufio.NewReaderSize(c, 32<<10)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		if bytes.HasPrefix(line, []byte("data: ")) {
			if own != "" && bytes.Contains(line, []byte(own)) {
				ec.own[t].Add(1)
			}
			ec.n.Add(1)
			select {
			case ec.progress <- struct{}{}:
			default:
			}
		}
	}
}

// BenchmarkFanout is the live-event path's cost per event, from the NATS
// publish to the bytes on every stream's socket (the hub's decode,
// dispatch and wake-ups, the streams' render and writes), with the
// clients' reads but no services:
//
//	receipts  a READ receipt of a staff message (read mode): every one of
//	          the practice's eight staff streams gets it, its sender at once
//	created   a staff message (send mode): its patient's stream gets it at
//	          once, the eight staff streams too
//
// It reports the SSE writes per event (all streams).
//
//	go test ./gateway -run '^$' -bench Fanout -benchmem
func BenchmarkFanout(b *testing.B) {
	for _, kind := range []string{"receipts", "created"} {
		b.Run(kind, func(b *testing.B) {
			h := newHarness(b, func(_ *harness, c *Config, _ *Deps) { c.KeepAlive = time.Hour })
			ec := &eventCounter{progress: make(chan struct{}, 1)}
			open := func(sub, role string, t int, own string) {
				c, _ := h.rawEvents(h.token(sub, role, "p1", 0))
				go ec.read(c, t, own)
			}
			subjects := make([]string, fanoutThreads)
			payloads := make([][]byte, fanoutThreads)
			for i := range fanoutThreads {
				conv, patient, staff := "c"+strconv.Itoa(i), "pa"+strconv.Itoa(i), "s"+strconv.Itoa(i)
				h.conv.add("conversations/"+conv, "p1", "patients/"+patient)
				own := `"conversations/` + conv + `/messages/`
				if kind == "receipts" {
					open(staff, auth.RoleDentist, i, own) // the sender's stream
				} else {
					open(staff, auth.RoleDentist, i, "")
				}
				created := messageCreated("p1", conv, patient, "m1", "users/"+staff,
					"Your crown is ready for fitting; see you on Tuesday at 10:00", 1, false)
				var ev proto.Message = created
				base := natsx.SubjectMessageCreated
				if kind == "receipts" {
					m := created.GetMessage()
					m.Status, m.ReadTime = deliveryv1.Message_READ, m.GetCreateTime()
					ev = &deliveryv1.MessageUpdated{Meta: meta("p1", natsx.SystemActor), Message: m, Patient: "patients/" + patient}
					base = natsx.SubjectMessageStatusEcho
				} else {
					open(patient, auth.RolePatient, i, own) // the recipient's stream
				}
				raw, err := proto.Marshal(ev)
				require.NoError(b, err)
				subjects[i], payloads[i] = tenantSubject(base, ev), raw
			}
			perEvent := int64(fanoutThreads)
			if kind == "created" {
				perEvent++ // and its patient's
			}
			writes := func() float64 {
				v, err := strconv.ParseFloat(h.metricValue("clinicchat_gateway_sse_writes_total"), 64)
				require.NoError(b, err)
				return v
			}
			w0 := writes()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			n0 := ec.n.Load()
			var own0 [fanoutThreads]int64
			for t := range own0 {
				own0[t] = ec.own[t].Load()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				t := i % fanoutThreads
				if _, err := h.js.PublishAsync(subjects[t], payloads[t]); err != nil {
					b.Fatal(err)
				}
				// Each thread's next event once the one fanoutLag rounds
				// before it is on its own stream (the sender's for a
				// receipt, the recipient's for a message): the bench's
				// closed loop, a few events in flight per thread.
				if next := i + fanoutThreads; next < b.N {
					round := int64(next/fanoutThreads - fanoutLag)
					if round > 0 && !ec.await(ctx, func() bool { return ec.own[t].Load()-own0[t] >= round }) {
						b.Fatalf("thread %d: %d of %d events arrived", t, ec.own[t].Load()-own0[t], round)
					}
				}
			}
			want := n0 + int64(b.N)*perEvent
			if !ec.await(ctx, func() bool { return ec.n.Load() >= want }) {
				b.Fatalf("%d of %d events arrived", ec.n.Load()-n0, want-n0)
			}
			b.StopTimer()
			b.ReportMetric((writes()-w0)/float64(b.N), "writes/op")
		})
	}
}
