package natsx

import (
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	connMsgsDesc = prometheus.NewDesc("clinicchat_nats_connection_messages_total",
		"Messages that crossed the process's NATS connection (nats.Conn Stats): direction in (delivered to the process: "+
			"consumer deliveries, publish acknowledgements, API replies) or out (published by it: events, acks, pull requests, API requests).",
		[]string{"direction"}, nil)
	connBytesDesc = prometheus.NewDesc("clinicchat_nats_connection_bytes_total",
		"Payload bytes that crossed the process's NATS connection (nats.Conn Stats), by direction as clinicchat_nats_connection_messages_total.",
		[]string{"direction"}, nil)
)

// ConnCollector reports nc's message and byte counters: the NATS traffic
// per unit of work, independent of the machine's load (divide by the
// messages sent).
func ConnCollector(nc *nats.Conn) prometheus.Collector { return connCollector{nc} }

type connCollector struct{ nc *nats.Conn }

func (c connCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- connMsgsDesc
	ch <- connBytesDesc
}

func (c connCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.nc.Stats()
	ch <- prometheus.MustNewConstMetric(connMsgsDesc, prometheus.CounterValue, float64(st.InMsgs), "in")
	ch <- prometheus.MustNewConstMetric(connMsgsDesc, prometheus.CounterValue, float64(st.OutMsgs), "out")
	ch <- prometheus.MustNewConstMetric(connBytesDesc, prometheus.CounterValue, float64(st.InBytes), "in")
	ch <- prometheus.MustNewConstMetric(connBytesDesc, prometheus.CounterValue, float64(st.OutBytes), "out")
}
