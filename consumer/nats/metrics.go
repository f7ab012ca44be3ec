package nats

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

// shardCollector reads a Stream's partitions at scrape time, so the delivery
// path pays nothing for these gauges. The source name is a constant label:
// each Stream registers its own collector. The names and help texts are
// those of consumer/kafka's collector, word for word: one registry refuses
// two descriptors of the same name with different help.
type shardCollector struct {
	shards           func() []ShardStatus
	lag, age, states *prometheus.Desc
}

func newShardCollector(source string, shards func() []ShardStatus) *shardCollector {
	cl := prometheus.Labels{"source": source}
	return &shardCollector{
		shards: shards,
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
	for _, st := range c.shards() {
		lag += st.Lag
		age = max(age, st.IteratorAge.Seconds())
		counts[st.State]++
	}
	ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, float64(lag))
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age)
	for _, state := range shardStates {
		ch <- prometheus.MustNewConstMetric(c.states, prometheus.GaugeValue, float64(counts[state]), string(state))
	}
}
