package consumer

import "github.com/prometheus/client_golang/prometheus"

// AsyncMetrics are an async source's metrics (SPEC §6), with the source as a
// constant label: each source registers its own collector. One definition
// serves Kafka and JetStream, so the two can never disagree on a help text
// (a registry refuses that). Labels: source and reason (a dead-letter
// condition), bounded.
type AsyncMetrics struct {
	// Received counts events the broker handed to sluice, redeliveries and
	// retries included.
	Received prometheus.Counter
	// Age observes now − the event's time (the broker's timestamp of the
	// original record) when sluice takes it to invoke.
	Age prometheus.Histogram
	// Dropped counts events given up on, by condition.
	Dropped *prometheus.CounterVec
}

// NewAsyncMetrics returns the metrics of async source source; register the
// result (it is a prometheus.Collector).
func NewAsyncMetrics(source string) *AsyncMetrics {
	cl := prometheus.Labels{"source": source}
	return &AsyncMetrics{
		Received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_async_events_received_total", ConstLabels: cl,
			Help: "Async events delivered to sluice by the broker, redeliveries and retries included.",
		}),
		Age: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sluice_async_event_age_seconds", ConstLabels: cl,
			Help:    "Age of async events (now − the time the broker stored the original event) when sluice took them to invoke.",
			Buckets: []float64{0.01, 0.1, 1, 5, 30, 60, 300, 900, 1800, 3600, 7200, 21600},
		}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_async_events_dropped_total", ConstLabels: cl,
			Help: "Async events given up on (dead-lettered, or dropped without on_failure), by condition.",
		}, []string{"reason"}),
	}
}

// Describe implements prometheus.Collector.
func (m *AsyncMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.Received.Describe(ch)
	m.Age.Describe(ch)
	m.Dropped.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *AsyncMetrics) Collect(ch chan<- prometheus.Metric) {
	m.Received.Collect(ch)
	m.Age.Collect(ch)
	m.Dropped.Collect(ch)
}
