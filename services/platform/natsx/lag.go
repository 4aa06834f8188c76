package natsx

import (
	"context"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	pendingDesc = prometheus.NewDesc("clinicchat_nats_consumer_pending_messages",
		"Messages of the stream not yet delivered to the durable consumer (JetStream num_pending, read at scrape): its lag.",
		[]string{"stream", "consumer"}, nil)
	ackPendingDesc = prometheus.NewDesc("clinicchat_nats_consumer_ack_pending_messages",
		"Messages delivered to the durable consumer and not yet acknowledged (JetStream num_ack_pending).",
		[]string{"stream", "consumer"}, nil)
	redeliveredDesc = prometheus.NewDesc("clinicchat_nats_consumer_redelivered_messages",
		"Messages delivered more than once and still unacknowledged (JetStream num_redelivered).",
		[]string{"stream", "consumer"}, nil)
)

// LagCollector reports, at every scrape, the lag of the durable consumers
// on clinicchat's streams whose name starts with prefix ("audit-", or ""
// for every durable, as the all-in-one does): one consumer listing per
// stream, bounded by a 2 s timeout. Every replica of a service reports the
// same consumers (a durable is shared): aggregate with max by (stream,
// consumer).
func LagCollector(js jetstream.JetStream, prefix string) prometheus.Collector {
	return lagCollector{js: js, prefix: prefix}
}

type lagCollector struct {
	js     jetstream.JetStream
	prefix string
}

func (c lagCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- pendingDesc
	ch <- ackPendingDesc
	ch <- redeliveredDesc
}

func (c lagCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, sc := range Streams(StreamsConfig{}) {
		str, err := c.js.Stream(ctx, sc.Name)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(pendingDesc, err)
			return
		}
		list := str.ListConsumers(ctx)
		var infos []*jetstream.ConsumerInfo
		durables := map[string]bool{}
		for info := range list.Info() {
			infos = append(infos, info)
			durables[info.Config.Durable] = true
		}
		for _, info := range infos {
			name := info.Config.Durable
			if name == "" || !strings.HasPrefix(name, c.prefix) {
				continue // ordered (gateway fan-out) and other services' consumers
			}
			// A SoleConsumer's AckAll durable is reported under the name of
			// the explicit one it replaces (one series across the upgrade);
			// that one, left by a crash until the next start, is not.
			if durables[name+AckAllSuffix] {
				continue
			}
			name = strings.TrimSuffix(name, AckAllSuffix)
			ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(info.NumPending), sc.Name, name)
			ch <- prometheus.MustNewConstMetric(ackPendingDesc, prometheus.GaugeValue, float64(info.NumAckPending), sc.Name, name)
			ch <- prometheus.MustNewConstMetric(redeliveredDesc, prometheus.GaugeValue, float64(info.NumRedelivered), sc.Name, name)
		}
		if err := list.Err(); err != nil {
			ch <- prometheus.NewInvalidMetric(pendingDesc, err)
			return
		}
	}
}
