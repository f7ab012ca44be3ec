package kafka

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/shard"
)

// shardStates are the states sluice_shards reports, every one of them on
// each scrape (0 included), so a state that empties reads 0 rather than
// vanishing.
var shardStates = []shard.State{
	shard.StateRunning, shard.StateIdle, shard.StateThrottled, shard.StateRetrying, shard.StateBlocked,
}

// collector reads a Source's partitions at scrape time (as the dispatcher's
// usageCollector does), so the delivery path pays nothing for these gauges.
// The source name is a constant label: each Source registers its own
// collector, and Prometheus tells collectors apart by their descriptors'
// constant labels. Labels are source names and shard states: bounded.
type collector struct {
	s                *Source
	lag, age, shards *prometheus.Desc
}

func newCollector(s *Source) *collector {
	cl := prometheus.Labels{"source": s.name}
	return &collector{
		s: s,
		lag: prometheus.NewDesc("sluice_offset_lag",
			"Records not yet checkpointed, summed over the source's partitions owned here: high watermark minus the next offset to commit.",
			nil, cl),
		age: prometheus.NewDesc("sluice_iterator_age_seconds",
			"Age of the oldest record not yet checkpointed, the maximum over the source's partitions owned here; 0 when none.",
			nil, cl),
		shards: prometheus.NewDesc("sluice_shards",
			"Shards (partitions owned here) of the source, by state.",
			[]string{"state"}, cl),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.lag
	ch <- c.age
	ch <- c.shards
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	var lag int64
	var age float64
	counts := make(map[shard.State]int, len(shardStates))
	for _, st := range c.s.Shards() {
		lag += st.Lag
		age = max(age, st.IteratorAge.Seconds())
		counts[st.State]++
	}
	ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, float64(lag))
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age)
	for _, state := range shardStates {
		ch <- prometheus.MustNewConstMetric(c.shards, prometheus.GaugeValue, float64(counts[state]), string(state))
	}
}
