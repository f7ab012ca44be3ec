package consumer

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/shard"
)

// shardStates are the states sluice_shards reports, every one of them on
// each scrape (0 included), so a state that empties reads 0 rather than
// vanishing.
var shardStates = []shard.State{
	shard.StateRunning, shard.StateIdle, shard.StateThrottled, shard.StateRetrying, shard.StateBlocked,
}

// ShardLoad is what the shard metrics read of one shard.
type ShardLoad struct {
	State       shard.State
	Lag         int64         // records not yet checkpointed
	IteratorAge time.Duration // age of the oldest record not yet checkpointed; 0 when none
}

// shardCollector reads a source's shards at scrape time (as the
// dispatcher's usageCollector does), so the delivery path pays nothing for
// these gauges. The source name is a constant label: each source registers
// its own collector, and Prometheus tells collectors apart by their
// descriptors' constant labels. Labels are source names and shard states:
// bounded. One definition serves Kafka and JetStream, so the two can never
// disagree on a help text (a registry refuses that).
type shardCollector struct {
	loads            func() []ShardLoad
	lag, age, states *prometheus.Desc
}

// NewShardCollector returns the collector of sluice_offset_lag,
// sluice_iterator_age_seconds and sluice_shards for source, reading loads
// at each scrape.
func NewShardCollector(source string, loads func() []ShardLoad) prometheus.Collector {
	cl := prometheus.Labels{"source": source}
	return &shardCollector{
		loads: loads,
		lag: prometheus.NewDesc("sluice_offset_lag",
			"Records not yet checkpointed, summed over the source's partitions owned here: high watermark minus the next offset to commit.",
			nil, cl),
		age: prometheus.NewDesc("sluice_iterator_age_seconds",
			"Age of the oldest record not yet checkpointed, the maximum over the source's partitions owned here; 0 when none.",
			nil, cl),
		states: prometheus.NewDesc("sluice_shards",
			"Shards (partitions owned here) of the source, by state.",
			[]string{"state"}, cl),
	}
}

func (c *shardCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.lag
	ch <- c.age
	ch <- c.states
}

func (c *shardCollector) Collect(ch chan<- prometheus.Metric) {
	var lag int64
	var age float64
	counts := make(map[shard.State]int, len(shardStates))
	for _, l := range c.loads() {
		lag += l.Lag
		age = max(age, l.IteratorAge.Seconds())
		counts[l.State]++
	}
	ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, float64(lag))
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age)
	for _, state := range shardStates {
		ch <- prometheus.MustNewConstMetric(c.states, prometheus.GaugeValue, float64(counts[state]), string(state))
	}
}
