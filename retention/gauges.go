package retention

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Measurer reports how much a dead-letter destination holds: its size in
// bytes on the broker and the timestamp of its oldest record (zero when
// empty). consumer/kafka.Reader and consumer/nats.Reader implement it.
type Measurer interface {
	Measure(ctx context.Context) (bytes int64, oldest time.Time, err error)
}

// DefaultGaugeTTL is how long a measurement is reused: measuring asks the
// broker (Kafka: log dirs and the first record of each partition), which a
// scrape every few seconds should not repeat each time.
const DefaultGaugeTTL = 15 * time.Second

// measureTimeout bounds one measurement, so that a slow broker does not hold
// up a scrape.
const measureTimeout = 5 * time.Second

// Gauges is a prometheus.Collector for the dead-letter destinations:
// sluice_dead_letter_stored_bytes and sluice_dead_letter_oldest_age_seconds,
// by destination. It measures each destination on scrape, reusing a
// measurement for DefaultGaugeTTL. A destination that cannot be measured is
// left out of that scrape (and logged), rather than reported as empty.
type Gauges struct {
	bytes, age *prometheus.Desc
	log        *slog.Logger
	now        func() time.Time
	ttl        time.Duration

	mu    sync.Mutex // guards dests; held across a scrape so measurements are not repeated by concurrent scrapes
	dests map[string]*measured
}

type measured struct {
	m      Measurer
	at     time.Time // of the cached measurement; zero: none yet
	bytes  int64
	oldest time.Time
	ok     bool
}

// NewGauges returns the collector; register it and Add destinations. log may
// be nil.
func NewGauges(log *slog.Logger) *Gauges {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Gauges{
		bytes: prometheus.NewDesc("sluice_dead_letter_stored_bytes",
			"Bytes a dead-letter destination holds on its broker (Kafka: log size of all replicas; JetStream: stream bytes).",
			[]string{"destination"}, nil),
		age: prometheus.NewDesc("sluice_dead_letter_oldest_age_seconds",
			"Age of the oldest record kept in a dead-letter destination; 0 when it is empty.",
			[]string{"destination"}, nil),
		log: log, now: time.Now, ttl: DefaultGaugeTTL,
		dests: map[string]*measured{},
	}
}

// Add measures destination name with m from now on.
func (g *Gauges) Add(name string, m Measurer) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dests[name] = &measured{m: m}
}

// Describe implements prometheus.Collector.
func (g *Gauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- g.bytes
	ch <- g.age
}

// Collect implements prometheus.Collector.
func (g *Gauges) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	defer g.mu.Unlock()
	names := make([]string, 0, len(g.dests))
	for n := range g.dests {
		names = append(names, n)
	}
	slices.Sort(names)
	now := g.now()
	for _, n := range names {
		d := g.dests[n]
		if d.at.IsZero() || now.Sub(d.at) >= g.ttl {
			ctx, cancel := context.WithTimeout(context.Background(), measureTimeout)
			b, oldest, err := d.m.Measure(ctx)
			cancel()
			d.at = now
			d.ok = err == nil
			if err != nil {
				g.log.Warn("dead-letter destination not measured", "destination", n, "err", err)
			} else {
				d.bytes, d.oldest = b, oldest
			}
		}
		if !d.ok {
			continue
		}
		age := 0.0
		if !d.oldest.IsZero() {
			age = max(0, now.Sub(d.oldest).Seconds())
		}
		ch <- prometheus.MustNewConstMetric(g.bytes, prometheus.GaugeValue, float64(d.bytes), n)
		ch <- prometheus.MustNewConstMetric(g.age, prometheus.GaugeValue, age, n)
	}
}
